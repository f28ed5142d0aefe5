"""POST /v1/completions: text and token-id prompts, several prompts, echo, logprobs, streaming."""

from __future__ import annotations

import json
from typing import Any

from fastapi.testclient import TestClient

from tests.fixtures.language import COMPLETION_ANSWER, COMPLETION_PROMPT, TinyLM
from tests.hardening import assert_envelope

BOTH_ENGINES = True  # every test using the tiny chat models runs on transformers and on llama.cpp


def complete(client: TestClient, model: Any, **fields: Any) -> Any:
    body = {"model": str(model), "prompt": COMPLETION_PROMPT, "temperature": 0, "max_tokens": 30, **fields}
    return client.post("/v1/completions", json=body)


def test_completion_object(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    r = complete(lm_client, tiny_lm.path)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["object"] == "text_completion" and data["id"].startswith("cmpl-")
    assert data["choices"][0]["text"] == COMPLETION_ANSWER
    assert data["choices"][0]["finish_reason"] == "stop"
    assert data["usage"]["completion_tokens"] == 7 and data["usage"]["prompt_tokens"] > 0


def test_default_max_tokens_is_16_and_length(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    body = {"model": str(tiny_lm.random_path), "prompt": "x", "temperature": 0}
    data = lm_client.post("/v1/completions", json=body).json()
    assert data["choices"][0]["finish_reason"] == "length" and data["usage"]["completion_tokens"] == 16


def test_list_of_prompts_and_n(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    data = complete(lm_client, tiny_lm.path, prompt=[COMPLETION_PROMPT, "Say"], n=2, max_tokens=4).json()
    assert [c["index"] for c in data["choices"]] == [0, 1, 2, 3]
    assert data["choices"][0]["text"] == data["choices"][1]["text"] == COMPLETION_ANSWER[:len(
        data["choices"][0]["text"])]
    assert 8 <= data["usage"]["completion_tokens"] <= 16  # summed over the four choices
    one = complete(lm_client, tiny_lm.path, prompt="Say", max_tokens=4).json()
    assert data["usage"]["prompt_tokens"] == complete(lm_client, tiny_lm.path, max_tokens=1).json()["usage"][
        "prompt_tokens"] + one["usage"]["prompt_tokens"]


def test_token_id_prompt_and_echo(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(tiny_lm.folder(tiny_lm.path))(COMPLETION_PROMPT)["input_ids"]
    data = complete(lm_client, tiny_lm.path, prompt=ids).json()
    assert data["choices"][0]["text"] == COMPLETION_ANSWER
    assert data["usage"]["prompt_tokens"] == len(ids)
    echoed = complete(lm_client, tiny_lm.path, echo=True).json()
    assert echoed["choices"][0]["text"] == COMPLETION_PROMPT + COMPLETION_ANSWER
    bad = complete(lm_client, tiny_lm.path, prompt=[10**7])
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "prompt"


def test_legacy_logprobs_shape(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    lp = complete(lm_client, tiny_lm.path, logprobs=2).json()["choices"][0]["logprobs"]
    assert "".join(lp["tokens"]) == COMPLETION_ANSWER
    assert len(lp["token_logprobs"]) == len(lp["tokens"]) == len(lp["top_logprobs"]) == len(lp["text_offset"])
    assert all(len(t) == 2 for t in lp["top_logprobs"])
    assert lp["text_offset"][0] == 0 and lp["text_offset"][1] == len(lp["tokens"][0])


def test_stop_in_completions(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    data = complete(lm_client, tiny_lm.path, stop=", a").json()
    assert data["choices"][0]["text"] == " Paris" and data["choices"][0]["finish_reason"] == "stop"


def test_streaming_completions(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    body = {"model": str(tiny_lm.path), "prompt": COMPLETION_PROMPT, "temperature": 0, "max_tokens": 30,
            "stream": True, "stream_options": {"include_usage": True}}
    with lm_client.stream("POST", "/v1/completions", json=body) as r:
        lines = [line for line in r.iter_lines() if line]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]"
    frames = [json.loads(line[6:]) for line in lines[:-1]]
    assert len({f["id"] for f in frames}) == 1 and all(f["object"] == "text_completion" for f in frames)
    assert "".join(f["choices"][0]["text"] for f in frames[:-1]) == COMPLETION_ANSWER
    assert frames[-2]["choices"][0]["finish_reason"] == "stop"
    assert frames[-1]["choices"] == [] and frames[-1]["usage"]["completion_tokens"] == 7


def test_bad_completion_fields(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    assert complete(lm_client, tiny_lm.path, prompt=[]).status_code == 400
    r = lm_client.post("/v1/completions", json={"model": str(tiny_lm.path), "max_tokens": 2})
    assert_envelope(r, 400, "invalid_value", "prompt")
    assert_envelope(complete(lm_client, tiny_lm.path, prompt=None), 400, "invalid_value", "prompt")
    assert_envelope(complete(lm_client, tiny_lm.path, prompt=[[]]), 400, "invalid_value", "prompt.0")
    assert_envelope(complete(lm_client, tiny_lm.path, prompt=[[5, 6], []]), 400, "invalid_value", "prompt.1")
    r = complete(lm_client, tiny_lm.path, logprobs=50)
    assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs"
    r = complete(lm_client, tiny_lm.path, suffix="!", max_tokens=1)
    assert r.status_code == 200 and r.headers["x-ignored-params"] == "suffix"
