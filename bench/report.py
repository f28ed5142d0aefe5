"""Writes bench results: `results.json` (everything) and `results.md` (a table marking missed targets ✗)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.harness import fmt_value


def _mark(row: dict[str, Any]) -> str:
    if row.get("status") == "failed":
        return "✗ failed"
    if row.get("status") == "skipped":
        return "skipped"
    return {True: "✓", False: "✗", None: ""}[row.get("met")]


def _target(row: dict[str, Any]) -> str:
    target = row.get("target") or ""
    if target and row.get("added_at_most") is not None:
        target += f" or +{fmt_value(row['added_at_most'], row.get('unit', 's'))}"
    return target.replace("<=", "≤ ").replace(">=", "≥ ")


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def row_line(row: dict[str, Any]) -> str:
    """One markdown table line for a result row."""
    if row.get("status") != "ok":
        cells = [row.get("phase", ""), row.get("metric", ""), "-", "-", "-", "-", "", _mark(row),
                 row.get("note", "")]
        return "| " + " | ".join(_cell(c) for c in cells) + " |"
    unit = row.get("unit", "s")
    ours, base = row["ours"], row["baseline"]
    ratio = row.get("ratio")
    cells = [
        row["phase"], row["metric"], fmt_value(ours["median"], unit), fmt_value(base["median"], unit),
        f"{ratio:.2f}×" if ratio is not None else "-",
        f"{ours['spread']:.0%} / {base['spread']:.0%}",
        _target(row), _mark(row), row.get("note", ""),
    ]
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def markdown(data: dict[str, Any]) -> str:
    """The results table, calibration per phase, and the machine it ran on."""
    m = data.get("machine", {})
    s = data.get("settings", {})
    lines = [
        "| Phase | Metric | Ours | Baseline | Ratio | Spread (ours / baseline) | Target | Met | Note |",
        "|---|---|---|---|---|---|---|---|---|",
        *(row_line(r) for r in data.get("rows", [])),
        "",
        "Ratio = median of ours (through the HTTP server) / median of the same work called directly in-process, "
        "measured interleaved in the same run; spread = (max - min) / median over the rounds. "
        "✗ marks a missed target.",
        "",
        "| Phase | Calibration before | Calibration after | Phase time |",
        "|---|---|---|---|",
    ]
    for p in data.get("phases", []):
        lines.append(f"| {p['name']} | {p['calibration_before'] * 1000:.0f} ms | "
                     f"{p['calibration_after'] * 1000:.0f} ms | {p['wall_s']:.1f} s |")
    lines += [
        "",
        f"Machine: {m.get('cpu_count')} CPUs ({m.get('processor', '')}), torch {m.get('torch')}, "
        f"transformers {m.get('transformers', '-')}, Python {m.get('python')}, {m.get('date')}; "
        f"{s.get('rounds')} rounds, {s.get('threads')} torch thread(s){', quick' if s.get('quick') else ''}; "
        f"total {data.get('total_s', 0):.0f} s. Calibration = a fixed 256×256 matmul loop timed before and after "
        "each phase (a large change means the machine was busy).",
        "",
    ]
    return "\n".join(lines)


def write_reports(data: dict[str, Any], out: Path, stem: str = "results") -> tuple[Path, Path]:
    """Write `<stem>.json` and `<stem>.md` into `out`; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    json_path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    md_path.write_text(markdown(data))
    return json_path, md_path


START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"


def update_doc(doc: Path, table_md: str) -> bool:
    """Replace the text between the bench-table markers of a markdown file; False if it has no markers."""
    text = doc.read_text()
    if START not in text or END not in text:
        return False
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{START}\n{table_md.rstrip()}\n{END}{tail}")
    return True
