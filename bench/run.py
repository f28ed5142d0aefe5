"""Run the CPU benchmarks: `python bench/run.py [--phase NAME ...] [--quick] [--rounds N] [--out DIR]`.

Discovers `bench/phase_*.py` modules, runs them in a fixed order (startup, overhead, embeddings, chat,
images, vision, audio, multimodal, cache, ray; others after, alphabetically), times a calibration loop before
and after each, and writes `results.json` and `results.md` (default: into bench/). A phase that raises is
reported as failed and the run goes on; the exit code is 0 unless `--strict` (then 1 on any failure or
missed target).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ORDER = ("startup", "overhead", "embeddings", "chat", "chat_llamacpp", "images", "vision", "audio", "speech",
         "multimodal", "cache", "ray")
DEFAULT_ROUNDS = 5
QUICK_ROUNDS = 2


def discover(bench_dir: Path | None = None) -> list[tuple[str, str]]:
    """(phase name, module name) of every bench/phase_*.py, in the fixed order then alphabetically."""
    folder = bench_dir or Path(__file__).resolve().parent
    names = sorted(p.stem[len("phase_"):] for p in folder.glob("phase_*.py"))
    rank = {name: i for i, name in enumerate(ORDER)}
    names.sort(key=lambda n: (rank.get(n, len(ORDER)), n))
    return [(n, f"bench.phase_{n}") for n in names]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--phase", action="append", default=[], metavar="NAME",
                   help="run only this phase (repeatable); default all")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_ROUNDS} rounds and smaller work")
    p.add_argument("--rounds", type=int, help=f"rounds per measurement (default {DEFAULT_ROUNDS})")
    p.add_argument("--threads", type=int, default=1, help="torch threads, server and baseline alike (default 1)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                   help="folder for results.json and results.md (default bench/)")
    p.add_argument("--update-docs", type=Path, nargs="?", const=ROOT / "docs/benchmarks.md", metavar="FILE",
                   help="also write the table into FILE between its bench-table markers (default "
                        "docs/benchmarks.md)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a phase fails or a target is missed")
    p.add_argument("--list", action="store_true", help="list the phases found and exit")
    return p.parse_args(argv)


def run_phase(h: Any, name: str, module: ModuleType | None, error: str | None = None) -> dict[str, Any]:
    """Run one phase between two calibrations; a raised exception becomes a failed row."""
    h.phase = name
    before = h.calibrate()
    h.log(f"calibration before: {before * 1000:.0f} ms")
    started = time.perf_counter()
    if error is None and module is not None:
        try:
            module.run(h)
        except Exception as exc:  # noqa: BLE001 - a failing phase must not stop the run
            traceback.print_exc()
            error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
    if error is not None:
        h.fail(error)
    wall = time.perf_counter() - started
    after = h.calibrate()
    h.log(f"calibration after: {after * 1000:.0f} ms; phase took {wall:.1f} s")
    record = {"name": name, "calibration_before": before, "calibration_after": after, "wall_s": wall,
              "error": error}
    h.phases.append(record)
    return record


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from bench.harness import Harness, machine_info
    from bench.report import update_doc, write_reports

    found = discover()
    if args.list:
        print("\n".join(name for name, _ in found))
        return 0
    wanted = args.phase or [name for name, _ in found]
    known = dict(found)
    rounds = args.rounds if args.rounds else (QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS)
    h = Harness(rounds=rounds, quick=args.quick, threads=args.threads)
    h.apply_threads()
    started = time.perf_counter()
    for name in wanted:
        if name not in known:
            run_phase(h, name, None, error=f"no bench/phase_{name}.py (found: {', '.join(known) or 'none'})")
            continue
        try:
            module = importlib.import_module(known[name])
        except Exception as exc:  # noqa: BLE001
            run_phase(h, name, None, error=f"import failed: {type(exc).__name__}: {exc}")
            continue
        run_phase(h, getattr(module, "PHASE", name), module)
    total = time.perf_counter() - started
    data = {
        "machine": machine_info(),
        "settings": {"rounds": rounds, "quick": args.quick, "threads": args.threads,
                     "phases": wanted, "argv": sys.argv[1:]},
        "total_s": total,
        "phases": h.phases,
        "rows": h.rows,
    }
    json_path, md_path = write_reports(data, args.out)
    print(f"\nwrote {json_path} and {md_path} in {total:.0f} s")
    print(md_path.read_text())
    if args.update_docs and not update_doc(args.update_docs, md_path.read_text()):
        print(f"{args.update_docs} has no bench-table markers; not updated", file=sys.stderr)
    bad = [r for r in h.rows if r.get("status") == "failed" or r.get("met") is False]
    return 1 if args.strict and bad else 0


if __name__ == "__main__":
    sys.exit(main())
