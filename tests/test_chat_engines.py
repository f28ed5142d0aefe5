"""Which engine serves a chat model: llama.cpp for a GGUF file by default, transformers otherwise or on request,
and the faults of the choice (an engine that cannot be had, a corrupt GGUF) as clean errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.language import HELLO_ANSWER, HELLO_PROMPT, TinyLM, as_gguf
from tests.hardening import assert_envelope

HELLO = [{"role": "user", "content": HELLO_PROMPT}]


@pytest.fixture(scope="module")
def gguf_lm(tiny_lm: TinyLM, tiny_root: Path) -> TinyLM:
    from models.language import llama_cpp_missing

    if llama_cpp_missing():
        pytest.skip(f"llama-cpp-python is not available: {llama_cpp_missing()}")
    return as_gguf(tiny_lm, tiny_root / "language-gguf")


def _config(tmp_path: Path, model: Path, **options: Any) -> Path:
    lines = "".join(f"    {k}: {v}\n" for k, v in options.items())
    path = tmp_path / "models.yaml"
    path.write_text(f"version: 1\nmodels:\n  chat:\n    model: {model}\n{lines}")
    return path


@pytest.mark.parametrize("engine", ["auto", "llama.cpp", "transformers"])
def test_a_gguf_file_runs_on_the_engine_asked_for(client_factory: Any, gguf_lm: TinyLM, tmp_path: Path,
                                                  engine: str) -> None:
    client = client_factory(config=_config(tmp_path, gguf_lm.path, engine=engine, parallel=2, context_size=256))
    r = client.post("/v1/chat/completions", json={"model": "chat", "messages": HELLO, "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == HELLO_ANSWER
    expected = "transformers" if engine == "transformers" else "llama.cpp"
    assert list(client.get("/health").json()["engines"].values()) == [expected]
    loaded = [m for m in client.get("/v1/models").json()["data"] if m["status"] == "loaded"]
    assert {m["engine"] for m in loaded} == {expected}
    if expected == "llama.cpp":  # the budget counts the mapped weights plus the KV cache of 2 x 256 tokens
        assert loaded[0]["memory_bytes"] == _weights_bytes(gguf_lm.path) + _kv_bytes(gguf_lm, 2 * 256)


def _weights_bytes(path: Path) -> int:
    """Bytes of the tensors of a GGUF file (what llama.cpp maps), read with the `gguf` package."""
    from gguf import GGUFReader

    return sum(int(t.n_bytes) for t in GGUFReader(path).tensors)


def _kv_bytes(lm: TinyLM, cells: int) -> int:
    """f16 keys and values of every layer for `cells` tokens, from the model's transformers config."""
    import json

    cfg = json.loads((lm.folder(lm.path) / "config.json").read_text())
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    return 2 * cfg["num_hidden_layers"] * head_dim * kv_heads * 2 * cells


def test_engine_llama_cpp_for_a_transformers_folder_is_a_400_naming_engine(client_factory: Any, tiny_lm: TinyLM,
                                                                            tmp_path: Path) -> None:
    client = client_factory(config=_config(tmp_path, tiny_lm.path, engine="llama.cpp"))
    r = client.post("/v1/chat/completions", json={"model": "chat", "messages": HELLO})
    assert_envelope(r, 400, "invalid_value")
    assert r.json()["error"]["param"] == "engine"


def test_a_prompt_longer_than_the_context_is_a_400_naming_messages(client_factory: Any, gguf_lm: TinyLM,
                                                                    tmp_path: Path) -> None:
    client = client_factory(config=_config(tmp_path, gguf_lm.path, context_size=32))
    r = client.post("/v1/chat/completions", json={"model": "chat", "messages": [
        {"role": "user", "content": "Say hello " * 40}]})
    assert_envelope(r, 400)
    assert r.json()["error"]["param"] == "messages"


def test_a_corrupt_gguf_is_model_load_failed_and_the_server_keeps_serving(client_factory: Any, gguf_lm: TinyLM,
                                                                           tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(gguf_lm.path.read_bytes()[:5000])  # truncated
    client = client_factory()
    r = client.post("/v1/chat/completions", json={"model": str(broken), "messages": HELLO})
    assert_envelope(r, 500, "model_load_failed")
    ok = client.post("/v1/chat/completions", json={"model": str(gguf_lm.path), "messages": HELLO, "temperature": 0})
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == HELLO_ANSWER


def test_engine_llama_cpp_with_quantization_is_a_400_naming_quantization(client_factory: Any, gguf_lm: TinyLM,
                                                                         tmp_path: Path) -> None:
    client = client_factory(config=_config(tmp_path, gguf_lm.path, engine="llama.cpp", quantization="8bit"))
    r = client.post("/v1/chat/completions", json={"model": "chat", "messages": HELLO})
    assert_envelope(r, 400, "invalid_value")
    assert r.json()["error"]["param"] == "quantization"


def test_load_options_pick_the_engine_stay_with_the_model_and_other_ones_reload_it(client_factory: Any, gguf_lm: TinyLM
                                                                              ) -> None:
    client = client_factory()
    model = str(gguf_lm.path)
    r = client.post("/v1/models/load", json={"model": model, "type": "causal",
                                             "options": {"engine": "transformers", "max_batch_size": 2}})
    assert r.status_code == 200, r.text
    assert r.json()["engine"] == "transformers"
    chat = client.post("/v1/chat/completions", json={"model": model, "messages": HELLO, "temperature": 0})
    assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"] == HELLO_ANSWER
    same = client.post("/v1/models/load", json={"model": model, "options": {"engine": "transformers"}})
    assert same.status_code == 200 and same.json()["engine"] == "transformers"  # the same options: found loaded
    other = client.post("/v1/models/load", json={"model": model, "options": {"engine": "llama.cpp", "parallel": 2}})
    assert other.status_code == 200 and (other.json()["engine"], other.json()["parallel"]) == ("llama.cpp", 2)
    assert list(client.get("/health").json()["engines"].values()) == ["llama.cpp"]  # reloaded, not loaded twice
    assert client.post("/v1/models/unload", json={"model": model}).status_code == 200
    # unloaded: the options are forgotten, a plain request gets the defaults again
    again = client.post("/v1/chat/completions", json={"model": model, "messages": HELLO, "temperature": 0})
    assert again.status_code == 200
    item = client.post("/v1/models/load", json={"model": model}).json()
    assert (item["engine"], item["parallel"]) == ("llama.cpp", 8)


def test_load_options_of_llama_cpp_set_its_context_and_sequences(client_factory: Any, gguf_lm: TinyLM) -> None:
    client = client_factory()
    r = client.post("/v1/models/load", json={"model": str(gguf_lm.path), "options": {
        "engine": "llama.cpp", "parallel": 3, "context_size": 128, "threads": 1}})
    assert r.status_code == 200, r.text
    item = r.json()
    assert (item["engine"], item["parallel"], item["threads"]) == ("llama.cpp", 3, 1)
    assert item["memory_bytes"] == _weights_bytes(gguf_lm.path) + _kv_bytes(gguf_lm, 3 * 128)


@pytest.mark.parametrize(("options", "param"), [
    ({"engine": "vllm"}, "options.engine"),
    ({"parallel": 0}, "options.parallel"),
    ({"trust_remote_code": True}, "options.trust_remote_code"),
    ({"dtype": "int3"}, "options.dtype"),
])
def test_bad_load_options_are_a_400_naming_the_option(client_factory: Any, gguf_lm: TinyLM, options: dict[str, Any],
                                                      param: str) -> None:
    r = client_factory().post("/v1/models/load", json={"model": str(gguf_lm.path), "options": options})
    assert_envelope(r, 400)
    assert r.json()["error"]["param"] == param


def test_hub_gguf_references_resolve_from_the_hub_cache_to_llama_cpp(client: Any, gguf_lm: TinyLM, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`org/repo:QUANT` and `org/repo/file.gguf` find a GGUF in the Hugging Face cache (offline) and run on
    llama.cpp; a quantization the repo does not hold is a 404, not a download attempt."""
    from huggingface_hub import constants

    revision = "0" * 40
    snapshot = tmp_path / "hub" / "models--org--tiny-gguf" / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot / "tiny-lm.Q8_0.gguf").symlink_to(gguf_lm.path)
    (snapshot / "tiny-lm.F16.gguf").symlink_to(gguf_lm.random_path)
    refs = tmp_path / "hub" / "models--org--tiny-gguf" / "refs"
    refs.mkdir()
    (refs / "main").write_text(revision)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for model in ("org/tiny-gguf:Q8_0", "org/tiny-gguf/tiny-lm.Q8_0.gguf"):
        r = client.post("/v1/chat/completions", json={"model": model, "messages": HELLO, "temperature": 0})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == HELLO_ANSWER
        assert client.get(f"/v1/models/{model}").json()["engine"] == "llama.cpp"
    r = client.post("/v1/chat/completions", json={"model": "org/tiny-gguf:Q2_K", "messages": HELLO})
    assert_envelope(r, 404)
