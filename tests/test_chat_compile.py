"""The per-model option `compile: true` on the transformers engine (models/language/compiled_backend.py):
compiled once in the load, the same greedy tokens as the eager engine, no recompilation while requests of
other lengths, concurrent rows and streams run, and rows longer than the static cache going on eagerly."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import make_settings
from tests.fixtures.language import COMPLETION_ANSWER, COMPLETION_PROMPT, HELLO_ANSWER, HELLO_PROMPT, TinyLM

PROMPTS = ["Say hello", "The quick brown fox jumps over the lazy dog and then", "What is the weather in Paris?"]


def _graphs() -> int:
    import torch._dynamo.utils

    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def _chat(client: TestClient, model: str, prompt: str, max_tokens: int = 24, **extra: Any) -> dict[str, Any]:
    r = client.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": prompt}],
                                                  "max_tokens": max_tokens, "temperature": 0, **extra})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def served(tiny_lm: TinyLM, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One server: the trained tiny model compiled, the random one compiled with a 64-position cache and an
    eager copy of the random one (another folder, so another model)."""
    eager = tmp_path_factory.mktemp("eager") / "tiny-lm-random"
    shutil.copytree(tiny_lm.random_path, eager)
    from server import create_app

    client = TestClient(create_app(make_settings(tmp_path_factory.mktemp("compile"))), raise_server_exceptions=False)
    client.__enter__()
    loads = {}
    small = {"compile": True, "context_size": 64}
    for path, options in ((tiny_lm.path, {"compile": True}), (tiny_lm.random_path, small), (eager, {})):
        before = _graphs()
        r = client.post("/v1/models/load", json={"model": str(path), "type": "causal", "options": options})
        assert r.status_code == 200, r.text
        loads[str(path)] = (r.json(), _graphs() - before)
    yield client, loads, str(tiny_lm.path), str(tiny_lm.random_path), str(eager)
    client.__exit__(None, None, None)


def test_compile_happens_in_the_load_and_models_show_it(served: Any) -> None:
    _, loads, trained, random, eager = served
    assert loads[trained][0]["compiled"] is True and loads[trained][1] >= 1  # graphs were made in the load
    assert loads[eager][0]["compiled"] is False and loads[eager][1] == 0
    assert loads[trained][0]["static_cache"] == 256  # the CPU default
    assert loads[random][0]["static_cache"] == 64  # context_size sets it
    assert loads[random][0]["context_length"] == 512  # the model's own context all the same


def test_compiled_model_gives_the_trained_answers(served: Any) -> None:
    client, _, trained, _, _ = served
    assert _chat(client, trained, HELLO_PROMPT, 40)["choices"][0]["message"]["content"] == HELLO_ANSWER
    r = client.post("/v1/completions", json={"model": trained, "prompt": COMPLETION_PROMPT, "max_tokens": 16,
                                             "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == COMPLETION_ANSWER


def test_compiled_greedy_tokens_equal_the_eager_engine_without_recompiling(served: Any) -> None:
    client, _, _, random, eager = served
    before = _graphs()
    for prompt in PROMPTS:  # prompts of different lengths, random weights: long, arbitrary token runs
        compiled = _chat(client, random, prompt, 30, logprobs=True)
        reference = _chat(client, eager, prompt, 30, logprobs=True)
        ids = [[t["token"] for t in r["choices"][0]["logprobs"]["content"]] for r in (compiled, reference)]
        assert ids[0] == ids[1] and len(ids[0]) == 30
    assert _graphs() == before


def test_concurrent_rows_and_streams_each_get_their_own_cache(served: Any) -> None:
    client, _, _, random, eager = served
    expected = [_chat(client, eager, p, 20)["choices"][0]["message"]["content"] for p in PROMPTS]
    before = _graphs()
    with ThreadPoolExecutor(len(PROMPTS) * 2) as pool:
        plain = list(pool.map(lambda p: _chat(client, random, p, 20), PROMPTS))
        streamed = list(pool.map(lambda p: _stream_text(client, random, p, 20), PROMPTS))
    assert [r["choices"][0]["message"]["content"] for r in plain] == expected
    assert streamed == expected
    two = _chat(client, random, PROMPTS[0], 20, n=2)  # n rows of one request: a cache each
    assert [c["message"]["content"] for c in two["choices"]] == [expected[0]] * 2
    assert _graphs() == before
    backend = client.app.state.manager.find(random)[0].model.engine.backend  # type: ignore[attr-defined]
    assert backend.caches <= len(PROMPTS) * 2 and len(backend._free) <= 2  # caches are reused, not hoarded


def _stream_text(client: TestClient, model: str, prompt: str, max_tokens: int) -> str:
    import json

    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True}
    text = ""
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                choices = json.loads(line[6:])["choices"]
                text += (choices[0]["delta"].get("content") or "") if choices else ""
    return text


def _token_ids(client: TestClient, model: str, content: str, max_tokens: int) -> list[str]:
    answer = _chat(client, model, content, max_tokens, logprobs=True)
    return [t["token"] for t in answer["choices"][0]["logprobs"]["content"]]


def test_rows_longer_than_the_static_cache_go_on_eagerly_with_the_same_tokens(served: Any) -> None:
    client, _, _, random, eager = served
    grows = _token_ids(client, random, "Say hello", 120)  # starts in the 64-position cache, moves out of it
    assert len(grows) == 120 and grows == _token_ids(client, eager, "Say hello", 120)
    long = " ".join(["weather"] * 80)  # does not fit the static cache: prefilled eagerly
    assert _token_ids(client, random, long, 10) == _token_ids(client, eager, long, 10)
    backend = client.app.state.manager.find(random)[0].model.engine.backend  # type: ignore[attr-defined]
    assert len(backend._free) >= 1  # the outgrown static cache went back to the pool


def test_compile_is_refused_for_a_vision_chat_model(client: TestClient, tiny_llava: Path) -> None:
    r = client.post("/v1/models/load", json={"model": str(tiny_llava), "type": "causal",
                                             "options": {"compile": True}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "compile"
