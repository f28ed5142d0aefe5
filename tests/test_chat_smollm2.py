"""The real SmolLM2-135M-Instruct (packaged GGUF) answers a simple question sensibly on both engines: llama.cpp
(the default for a GGUF file) and transformers, whose conversion is cached so later loads skip the GGUF
de-quantization."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.language import ENGINES

QUESTION = "Which city is the capital of France?"  # the 4-bit 135M model answers this one on both engines


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_default_model_says_paris(client_factory: Any, smollm2_path: Path, engine: str, tmp_path: Path) -> None:
    from models.language import gguf as gguf_cache
    from models.language import llama_cpp_missing

    if engine == "llama.cpp" and llama_cpp_missing():
        pytest.skip(f"llama-cpp-python is not available: {llama_cpp_missing()}")
    config = tmp_path / "models.yaml"
    config.write_text(f"version: 1\nmodels:\n  HuggingFaceTB/SmolLM2-135M-Instruct:\n    engine: {engine}\n")
    client = client_factory(config=config)
    r = client.post("/v1/chat/completions", json={
        "model": "default", "max_tokens": 30,  # no temperature: the packaged default decodes greedily
        "messages": [{"role": "user", "content": QUESTION}]})
    assert r.status_code == 200, r.text
    data = r.json()
    assert "Paris" in data["choices"][0]["message"]["content"]
    assert data["choices"][0]["finish_reason"] == "stop"
    assert data["model"] == "default"
    assert client.get("/health").json()["engines"] == {"HuggingFaceTB/SmolLM2-135M-Instruct": engine}
    if engine == "transformers":
        assert gguf_cache.cached(smollm2_path, "fp32") is not None  # the next load reads the converted folder
