"""The docs match the code and hold together: the settings table of docs/configuration.md is current and names
every setting, the README keeps its two commands and stays short, every page has a title, and every relative
link (and `#anchor`) of README.md, MODEL_TYPES.md and docs/*.md points at something that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.settings import PREFIX, Settings
from scripts.settings_table import MARKERS, render

ROOT = Path(__file__).resolve().parents[1]
CONFIGURATION = ROOT / "docs" / "configuration.md"
PAGES = [ROOT / "README.md", ROOT / "MODEL_TYPES.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def test_the_settings_table_is_current() -> None:
    text = CONFIGURATION.read_text()
    assert MARKERS.search(text), "docs/configuration.md lost its settings-table markers"
    assert text == render(text), "run: python scripts/settings_table.py"


def test_every_setting_is_documented() -> None:
    text = CONFIGURATION.read_text()
    missing = [name for name in Settings.model_fields if PREFIX + name.upper() not in text]
    assert not missing, missing


def test_readme_keeps_both_commands_and_stays_short() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "bash start.sh" in readme and "bash quick_test.sh" in readme
    assert "bash quick_test.sh" in (ROOT / ".ci" / "run").read_text()
    assert len(readme.splitlines()) <= 300, "README.md is the short entry page; move reference text to docs/"


@pytest.mark.parametrize("page", PAGES[2:], ids=lambda p: p.name)
def test_every_docs_page_starts_with_a_title_and_a_summary(page: Path) -> None:
    lines = page.read_text().splitlines()
    assert lines[0].startswith("# ") and lines[1] == "", page.name
    assert lines[2] and not lines[2].startswith(("#", "|", "```", "-", "<!--")), f"{page.name}: no summary"


def anchor(title: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation other than `-` and spaces dropped, spaces -> `-`."""
    title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title.strip())  # a link in a heading keeps its text
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code spans (links are not read inside them)."""
    text = re.sub(r"^ *```.*?^ *```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings (outside code blocks), with GitHub's -1, -2 suffixes for repeats."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    fence = False
    for line in page.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
        elif not fence and re.match(r"#{1,6} ", line):
            slug = anchor(line.lstrip("#"))
            found.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return found


def test_anchor_follows_github_rules() -> None:
    assert anchor("Using a `llamafarm.yaml` directly") == "using-a-llamafarmyaml-directly"
    assert anchor("Loading, GGUF, dtype and quantization") == "loading-gguf-dtype-and-quantization"
    assert anchor("Chat with images (vision-language models)") == "chat-with-images-vision-language-models"
    assert anchor("POST /v1/embeddings") == "post-v1embeddings"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in LINK.findall(_prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, broken


def test_nothing_points_at_the_old_assembled_docs() -> None:
    for page in PAGES:
        assert "docs/sections" not in page.read_text(), page.name
