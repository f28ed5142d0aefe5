"""The benchmark harness: statistics, target checks, interleaving, reports, phase discovery and failures,
and one end-to-end run of bench/run.py (real server subprocess, calibration, results.json + results.md)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import psutil
import pytest

from bench import run as bench_run
from bench.harness import Harness, ServerError, Stats, check_target, percentile, ratio_of
from bench.report import markdown

ROOT = Path(__file__).resolve().parent.parent


def make_harness(tmp_path: Path, **kw: Any) -> Harness:
    return Harness(rounds=kw.pop("rounds", 3), tmp=tmp_path, verbose=False, **kw)


def test_stats_median_spread_p95_of_values() -> None:
    s = Stats.of([3.0, 1.0, 2.0, 4.0])
    assert s.median == 2.5
    assert s.spread == pytest.approx((4.0 - 1.0) / 2.5)
    assert s.p95 == pytest.approx(3.85)
    assert (s.min, s.max) == (1.0, 4.0)
    assert s.values == [3.0, 1.0, 2.0, 4.0]
    assert Stats.of([5.0]).spread == 0.0 and Stats.of([5.0]).p95 == 5.0
    with pytest.raises(ValueError):
        Stats.of([])


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([10.0, 20.0, 30.0], 50) == 20.0
    assert percentile([10.0, 20.0], 95) == pytest.approx(19.5)
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 100) == 5.0


@pytest.mark.parametrize(("ratio", "target", "met"), [
    (1.2, "<=1.2", True), (1.21, "<=1.2", False), (1.2, "<1.2", False), (0.9, ">=0.9", True),
    (0.89, ">= 0.9", False), (2.0, ">1.5", True), (1.0, None, None), (None, "<=1.2", None),
])
def test_check_target_operators(ratio: float | None, target: str | None, met: bool | None) -> None:
    assert check_target(ratio, target) is met


def test_check_target_rejects_malformed_targets() -> None:
    with pytest.raises(ValueError):
        check_target(1.0, "about 1.2")


def test_result_ratio_target_and_added_alternative(tmp_path: Path) -> None:
    h = make_harness(tmp_path)
    h.phase = "overhead"
    slow, fast = Stats.of([0.010, 0.012, 0.011]), Stats.of([0.005, 0.005, 0.006])
    missed = h.result("m", slow, fast, target="<=1.5", note="n", extra_field=7)
    assert missed["ratio"] == pytest.approx(0.011 / 0.005)
    assert missed["met"] is False
    assert missed["added"] == pytest.approx(0.006)
    assert (missed["phase"], missed["note"], missed["extra_field"]) == ("overhead", "n", 7)
    assert missed["ours"]["values"] == [0.010, 0.012, 0.011]
    rescued = h.result("m", slow, fast, target="<=1.5", added_at_most=0.007)
    assert rescued["met"] is True
    assert h.result("m", fast, slow, target="<=1.5")["met"] is True
    assert h.result("m", slow, fast)["met"] is None
    assert ratio_of(slow, Stats.of([0.0])) is None
    assert len(h.rows) == 4


def test_interleave_alternates_after_one_warmup_each(tmp_path: Path) -> None:
    calls: list[str] = []

    def ours() -> float:
        calls.append("A")
        return float(len(calls))

    def base() -> float:
        calls.append("B")
        return 1.0

    o, b = make_harness(tmp_path, rounds=3).interleave(ours, base)
    assert calls == ["A", "B"] * 4
    assert o.values == [3.0, 5.0, 7.0] and b.values == [1.0, 1.0, 1.0]
    calls.clear()
    make_harness(tmp_path).interleave(ours, base, rounds=2, warmup=False)
    assert calls == ["A", "B", "A", "B"]


def test_markdown_marks_missed_failed_and_skipped_rows(tmp_path: Path) -> None:
    h = make_harness(tmp_path)
    h.phase = "p"
    h.result("met one", Stats.of([1.0]), Stats.of([1.0]), target="<=1.2")
    h.result("missed | one", Stats.of([2.0]), Stats.of([1.0]), target="<=1.2")
    h.skip("skipped one", "no route")
    h.fail("ValueError: boom")
    text = markdown({"rows": h.rows, "phases": [{"name": "p", "calibration_before": 0.2,
                                                   "calibration_after": 0.25, "wall_s": 3.0}],
                     "machine": {"cpu_count": 2, "torch": "x"}, "settings": {"rounds": 3, "threads": 1}})
    lines = text.splitlines()
    assert next(ln for ln in lines if "met one" in ln).count("✓") == 1
    missed = next(ln for ln in lines if "missed \\| one" in ln)
    assert "✗" in missed and "2.00×" in missed
    assert "skipped" in next(ln for ln in lines if "skipped one" in ln)
    assert "✗ failed" in next(ln for ln in lines if "boom" in ln)
    assert "| p | 200 ms | 250 ms | 3.0 s |" in text


def test_discover_uses_the_fixed_order_then_alphabetical(tmp_path: Path) -> None:
    for name in ("cache", "zeta", "chat", "alpha", "startup", "overhead", "embeddings"):
        (tmp_path / f"phase_{name}.py").write_text("")
    (tmp_path / "harness.py").write_text("")
    assert [n for n, _ in bench_run.discover(tmp_path)] == [
        "startup", "overhead", "embeddings", "chat", "cache", "alpha", "zeta"]
    assert bench_run.discover(tmp_path)[0] == ("startup", "bench.phase_startup")


def test_server_that_cannot_start_raises_with_its_log(tmp_path: Path) -> None:
    h = make_harness(tmp_path)
    with pytest.raises(ServerError) as info, h.server(args=["--no-such-flag"], health_timeout=60):
        pass
    assert "exited with code" in str(info.value) and "no-such-flag" in str(info.value)


PROBE_PHASES = '''
import os

from bench.harness import timed

PHASE = "probe"

def run(h):
    with h.server() as srv:
        assert srv.rss() > 0 and srv.startup_s > 0
        open(os.environ["PROBE_PID_FILE"], "w").write(str(srv.proc.pid))
        ours, base = h.interleave(lambda: timed(lambda: srv.get("/health")), lambda: 0.001)
        h.result("health request", ours, base, target="<=1000000")
'''


def test_run_end_to_end_writes_results_and_survives_a_failing_phase(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "probes"
    pkg.mkdir()
    (pkg / "probe_ok.py").write_text(textwrap.dedent(PROBE_PHASES))
    (pkg / "probe_bad.py").write_text("PHASE = 'bad'\n\ndef run(h):\n    raise RuntimeError('phase broke')\n")
    monkeypatch.syspath_prepend(str(pkg))
    monkeypatch.setenv("PROBE_PID_FILE", str(tmp_path / "pid"))
    monkeypatch.setattr(bench_run, "discover", lambda: [("probe", "probe_ok"), ("bad", "probe_bad")])
    out = tmp_path / "out"
    assert bench_run.main(["--quick", "--out", str(out)]) == 0
    data = json.loads((out / "results.json").read_text())
    assert data["settings"]["rounds"] == 2 and data["machine"]["cpu_count"] >= 1 and data["machine"]["torch"]
    assert [p["name"] for p in data["phases"]] == ["probe", "bad"]
    assert all(p["calibration_before"] > 0 and p["calibration_after"] > 0 for p in data["phases"])
    ok = next(r for r in data["rows"] if r["phase"] == "probe")
    assert ok["met"] is True and len(ok["ours"]["values"]) == 2
    assert not psutil.pid_exists(int((tmp_path / "pid").read_text()))  # the server was stopped
    bad = next(r for r in data["rows"] if r["phase"] == "bad")
    assert bad["status"] == "failed" and "phase broke" in bad["error"]
    md = (out / "results.md").read_text()
    assert "health request" in md and "✗ failed" in md
    assert bench_run.main(["--phase", "bad", "--strict", "--out", str(out)]) == 1


def test_cli_reports_an_unknown_phase_as_failed(tmp_path: Path) -> None:
    listed = subprocess.run([sys.executable, "bench/run.py", "--list"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert listed.returncode == 0 and "overhead" in listed.stdout.split()
    done = subprocess.run([sys.executable, "bench/run.py", "--phase", "nosuch", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert rows[0]["status"] == "failed" and "phase_nosuch" in rows[0]["error"]


def test_update_doc_replaces_only_the_marked_table(tmp_path: Path) -> None:
    from bench.report import END, START, update_doc

    doc = tmp_path / "bench.md"
    doc.write_text(f"# Title\n\n{START}\nold table\n{END}\n\nafter\n")
    assert update_doc(doc, "| new | table |\n") is True
    assert doc.read_text() == f"# Title\n\n{START}\n| new | table |\n{END}\n\nafter\n"
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    assert update_doc(plain, "x") is False and plain.read_text() == "no markers\n"
