"""Fill the generated parts of README.md: the settings table and the per-category sections.

Run `python scripts/assemble_docs.py` after changing settings or docs/sections/*.md; a test checks that the
README is up to date.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.settings_table import table  # noqa: E402

SECTION_ORDER = ["examples", "chat", "encoder", "images", "vision", "multimodal", "audio", "config", "llamafarm",
                 "sdk", "bench", "nx"]


def sections() -> str:
    folder = ROOT / "docs" / "sections"
    files = sorted(folder.glob("*.md"), key=lambda p: (SECTION_ORDER.index(p.stem) if p.stem in SECTION_ORDER
                                                       else len(SECTION_ORDER), p.stem))
    return "\n\n".join(p.read_text().strip() for p in files if p.stem != "examples")


def fill(text: str, marker: str, content: str) -> str:
    pattern = re.compile(rf"(<!-- {marker}:start -->\n).*?(<!-- {marker}:end -->)", re.DOTALL)
    return pattern.sub(lambda m: m.group(1) + content.strip() + "\n" + m.group(2), text)


def render() -> str:
    readme = (ROOT / "README.md").read_text()
    readme = fill(readme, "settings-table", table())
    readme = fill(readme, "sections", sections())
    examples = ROOT / "docs" / "sections" / "examples.md"
    if examples.exists():
        readme = fill(readme, "examples", examples.read_text())
    return readme


if __name__ == "__main__":
    (ROOT / "README.md").write_text(render())
    print("README.md updated")
