"""The settings table of docs/configuration.md, generated from core.settings.Settings (every field, env var, flag).

    python scripts/settings_table.py           # rewrite the table in docs/configuration.md
    python scripts/settings_table.py --print   # print it instead

The table sits between the `<!-- settings-table:start -->` and `<!-- settings-table:end -->` markers; a test
(tests/test_docs.py) checks that it is current.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.settings import PREFIX, Settings  # noqa: E402
from server import build_parser  # noqa: E402

DOC = ROOT / "docs" / "configuration.md"
MARKERS = re.compile(r"(<!-- settings-table:start -->\n).*?(<!-- settings-table:end -->)", re.DOTALL)


def flags_by_dest() -> dict[str, str]:
    """Settings field name -> its command-line flag."""
    return {a.dest: a.option_strings[0] for a in build_parser()._actions if a.option_strings and a.dest != "help"}


def table() -> str:
    flags = flags_by_dest()
    rows = ["| setting | environment variable | flag | default | meaning |", "|---|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        env = PREFIX + name.upper()
        legacy = [a for a in field.validation_alias.choices if isinstance(a, str) and a.startswith("TRANSFORMERS_")]
        if legacy:
            env += " (also " + ", ".join(legacy) + ")"
        default = field.default if field.default_factory is None else field.default_factory()
        default = "" if default in ([], None) else default
        rows.append(f"| `{name}` | `{env}` | {('`' + flags[name] + '`') if name in flags else ''} | "
                    f"{('`' + str(default) + '`') if default != '' else ''} | {field.description or ''} |")
    return "\n".join(rows)


def render(text: str) -> str:
    """`text` (a markdown page) with the table between its settings-table markers replaced by the current one."""
    if not MARKERS.search(text):
        raise SystemExit("no settings-table markers")
    return MARKERS.sub(lambda m: m.group(1) + table() + "\n" + m.group(2), text)


if __name__ == "__main__":
    if "--print" in sys.argv[1:]:
        print(table())
    else:
        DOC.write_text(render(DOC.read_text()))
        print(f"{DOC.relative_to(ROOT)} updated")
