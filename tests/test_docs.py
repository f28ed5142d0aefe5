"""The generated parts of README.md and MODEL_TYPES.md match the code and docs/sections."""

from __future__ import annotations

from pathlib import Path

from core.settings import PREFIX, Settings
from scripts.assemble_docs import render, render_model_types

ROOT = Path(__file__).resolve().parents[1]


def test_readme_and_model_types_are_assembled_from_current_sources() -> None:
    assert (ROOT / "README.md").read_text() == render(), "run: python scripts/assemble_docs.py"
    assert (ROOT / "MODEL_TYPES.md").read_text() == render_model_types(), "run: python scripts/assemble_docs.py"


def test_readme_documents_every_setting_and_both_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in Settings.model_fields:
        assert PREFIX + name.upper() in readme, name
    assert "bash start.sh" in readme and "bash quick_test.sh" in readme
    assert "bash quick_test.sh" in (ROOT / ".ci" / "run").read_text()
