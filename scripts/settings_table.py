"""Print the configuration table of README.md from core.settings.Settings (every field, env var, flag)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.settings import PREFIX, Settings  # noqa: E402
from server import build_parser  # noqa: E402


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


if __name__ == "__main__":
    print(table())
