"""The real SmolLM2-135M-Instruct (packaged GGUF) answers a simple question sensibly, and its conversion is
cached so later loads skip the GGUF de-quantization."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.mark.slow
def test_default_model_says_paris(client_factory: Any, smollm2_path: Path) -> None:
    from models.language import gguf as gguf_cache

    client = client_factory()
    r = client.post("/v1/chat/completions", json={
        "model": "default", "max_tokens": 30,  # no temperature: the packaged default decodes greedily
        "messages": [{"role": "user", "content": "What is the capital of France?"}]})
    assert r.status_code == 200, r.text
    data = r.json()
    assert "Paris" in data["choices"][0]["message"]["content"]
    assert data["choices"][0]["finish_reason"] == "stop"
    assert data["model"] == "default"
    assert gguf_cache.cached(smollm2_path, "fp32") is not None  # the next load reads the converted folder
