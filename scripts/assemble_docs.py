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


# MODEL_TYPES.md details: (category, section file, headings copied from it)
DETAILS = [
    ("causal", "chat", ["Loading, GGUF, dtype and quantization", "Chat templates", "Chat with images"]),
    ("encoder", "encoder", ["How the sub-kind is detected"]),
    ("diffusion", "images", ["How the pipeline is chosen"]),
    ("vision", "vision", ["How the sub-kind is chosen"]),
    ("audio", "audio", ["How models are handled"]),
    ("multimodal", "multimodal", ["How the sub-kind is chosen"]),
]


def subsection(text: str, title: str) -> str:
    """The body of the `###` subsection whose heading starts with `title` (code fences respected)."""
    out: list[str] = []
    inside = fence = False
    for line in text.splitlines():
        if line.startswith("```"):
            fence = not fence
        if not fence and line.startswith("#"):
            if inside:
                break
            inside = line.lstrip("#").strip().startswith(title)
            continue
        if inside:
            out.append(line)
    if not out:
        raise SystemExit(f"no subsection '{title}'")
    return "\n".join(out).strip()


def model_type_details() -> str:
    parts = []
    for category, stem, titles in DETAILS:
        text = (ROOT / "docs" / "sections" / f"{stem}.md").read_text()
        parts.append(f"## `{category}`\n")
        for title in titles:
            parts.append(f"### {title}\n\n{subsection(text, title)}\n")
    return "\n".join(parts)


def anchor(title: str) -> str:
    """GitHub's anchor for a heading."""
    slug = re.sub(r"[^\w\- ]", "", title.strip().lower())
    return slug.replace(" ", "-")


def toc(text: str) -> str:
    """A list of the README's `##` headings (outside code fences), linked."""
    lines, fence = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and line.startswith("## ") and line[3:].strip() != "Contents":
            title = line[3:].strip()
            lines.append(f"- [{title}](#{anchor(title)})")
    return "\n".join(lines)


def render() -> str:
    readme = (ROOT / "README.md").read_text()
    readme = fill(readme, "settings-table", table())
    readme = fill(readme, "sections", sections())
    examples = ROOT / "docs" / "sections" / "examples.md"
    if examples.exists():
        readme = fill(readme, "examples", examples.read_text())
    return fill(readme, "toc", toc(readme))


def render_model_types() -> str:
    return fill((ROOT / "MODEL_TYPES.md").read_text(), "details", model_type_details())


if __name__ == "__main__":
    (ROOT / "README.md").write_text(render())
    (ROOT / "MODEL_TYPES.md").write_text(render_model_types())
    print("README.md and MODEL_TYPES.md updated")
