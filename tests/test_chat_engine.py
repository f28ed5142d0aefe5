"""The decode engine: batched rows match solo runs, requests join a running batch, none starves; the
fallback (no cache merging) interleaves fairly; incremental decoding and stop matching units."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi.testclient import TestClient

from models.language.detokenize import IncrementalDecoder, StopMatcher
from tests.fixtures.language import TinyLM, transformers_only

BOTH_ENGINES = True  # every test using the tiny chat models runs on transformers and on llama.cpp

PROMPTS = ["a", "hello there friend", "The capital of France is a city", "x y"]


def _model(client: TestClient, path: Any) -> Any:
    client.post("/v1/completions", json={"model": str(path), "prompt": "a", "max_tokens": 1})
    return client.app.state.manager.find(str(path))[0].model  # type: ignore[attr-defined]


async def _generate(model: Any, prompt: str, max_tokens: int, delay: float = 0.0) -> tuple[str, str, int]:
    await asyncio.sleep(delay)
    prepared = model.prepare_completion(prompt)
    job = model.start(prepared, {"max_new_tokens": max_tokens, "temperature": 0})
    text, reason, tokens = "", "", 0
    async for ev in job.events():
        text += ev.text
        if ev.finish_reason:
            reason, tokens = ev.finish_reason, ev.completion_tokens
    return text, reason, tokens


def test_batched_rows_equal_solo_runs(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    model = _model(lm_client, tiny_lm.random_path)

    async def run() -> tuple[list[Any], list[Any]]:
        solo = [await _generate(model, p, 24) for p in PROMPTS]
        # different lengths, staggered arrivals: later rows join the running batch
        together = await asyncio.gather(*[_generate(model, p, 24 - 4 * i, delay=0.005 * i)
                                          for i, p in enumerate(PROMPTS)])
        return solo, together

    solo, together = lm_client.portal.call(run)  # type: ignore[union-attr]
    for i, (s, t) in enumerate(zip(solo, together, strict=True)):
        assert t[2] == 24 - 4 * i and t[1] == "length"
        assert s[0].startswith(t[0])


def test_concurrent_requests_share_steps(lm_client: TestClient, tiny_lm: TinyLM, monkeypatch: Any) -> None:
    model = _model(lm_client, tiny_lm.random_path)
    engine = model.engine
    step = engine.backend.step
    batch_sizes: list[int] = []

    def spy(state: Any, tokens: list[int]) -> Any:
        batch_sizes.append(len(tokens))
        return step(state, tokens)

    monkeypatch.setattr(engine.backend, "step", spy)

    async def run() -> list[Any]:
        return await asyncio.gather(*[_generate(model, p, 40) for p in PROMPTS * 2])

    results = lm_client.portal.call(run)  # type: ignore[union-attr]
    assert all(r[2] == 40 for r in results)  # nobody starved
    assert max(batch_sizes) >= 4  # they really ran as one batch
    assert len(batch_sizes) < 8 * 40 / 2


def test_unmergeable_caches_interleave_fairly(lm_client: TestClient, tiny_lm: TinyLM, monkeypatch: Any) -> None:
    transformers_only(tiny_lm)  # llama.cpp's sequences always share one batch
    model = _model(lm_client, tiny_lm.path)
    engine = model.engine
    monkeypatch.setattr(engine.backend, "mergeable", False)
    order: list[int] = []
    forward = engine.backend.model

    def spy(*args: Any, **kwargs: Any) -> Any:
        order.append(int(kwargs["input_ids"].shape[0]))
        return forward(*args, **kwargs)

    monkeypatch.setattr(engine.backend, "model", spy)

    async def run() -> list[Any]:
        return await asyncio.gather(*[_generate(model, p, 12) for p in PROMPTS[:3]])

    results = lm_client.portal.call(run)  # type: ignore[union-attr]
    assert all(r[1] in ("length", "stop") for r in results)
    assert set(order) == {1}  # each request is its own group
    solo = lm_client.portal.call(_generate, model, PROMPTS[1], 12)  # type: ignore[union-attr]
    assert results[1] == solo


class _Tok:
    """A byte tokenizer: token i is byte i (so UTF-8 characters span several tokens)."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def test_incremental_decoder_never_splits_characters() -> None:
    dec = IncrementalDecoder(_Tok())
    pieces = [dec.push(b) for b in "a😀é".encode()]
    assert pieces == ["a", "", "", "", "😀", "", "é"]
    dec = IncrementalDecoder(_Tok())
    for b in "x😀".encode()[:-1]:
        dec.push(b)
    assert dec.flush() == ""  # an incomplete last character is dropped, never emitted as U+FFFD


def test_stop_matcher_across_pieces() -> None:
    m = StopMatcher(["END", "xyz"])
    assert m.feed("abc E") == ("abc ", False)
    assert m.feed("N") == ("", False)
    assert m.feed("Dtail") == ("", True)
    m = StopMatcher(["END"])
    assert m.feed("EN") == ("", False)
    assert m.feed("d") == ("ENd", False)
    assert m.flush() == ""


def test_gguf_conversion_cache_location(tmp_path: Any, monkeypatch: Any) -> None:
    import os

    from models.language import gguf as gguf_cache

    monkeypatch.setenv("UNIVERSAL_RUNTIME_CACHE_DIR", str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    first = gguf_cache.converted_dir(gguf, "fp32")
    assert first.parent == tmp_path / "cache" / "converted"
    assert gguf_cache.converted_dir(gguf, "fp16") != first  # one conversion per dtype
    assert gguf_cache.cached(gguf, "fp32") is None  # nothing complete there yet
    os.utime(gguf, ns=(1, 1))
    assert gguf_cache.converted_dir(gguf, "fp32") != first  # a changed file is converted again


def test_any_integer_seed_is_accepted_and_reproducible(lm_client, tiny_lm) -> None:
    """Seeds outside torch's range (negative, >= 2^64) must neither fail nor stall the engine."""
    for seed in (-5, 2**64, 2**70):
        body = {"model": str(tiny_lm.path), "messages": [{"role": "user", "content": "Say hello"}],
                "temperature": 1.0, "seed": seed, "max_tokens": 5}
        first = lm_client.post("/v1/chat/completions", json=body)
        second = lm_client.post("/v1/chat/completions", json=body)
        assert first.status_code == 200, first.text
        assert first.json()["choices"][0]["message"]["content"] == second.json()["choices"][0]["message"]["content"]
