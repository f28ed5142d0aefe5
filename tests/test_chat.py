"""POST /v1/chat/completions without streaming, on the tiny trained and random LMs."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from tests.fixtures.language import HELLO_ANSWER, HELLO_PROMPT, TinyLM, transformers_only
from tests.hardening import assert_envelope

BOTH_ENGINES = True  # every test using the tiny chat models runs on transformers and on llama.cpp

HELLO = [{"role": "user", "content": HELLO_PROMPT}]


def chat(client: TestClient, model: Any, **fields: Any) -> Any:
    body = {"model": str(model), "messages": HELLO, "temperature": 0, **fields}
    return client.post("/v1/chat/completions", json=body)


def test_fixed_answer_ends_with_stop_and_real_usage(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    r = chat(lm_client, tiny_lm.path)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["object"] == "chat.completion" and data["id"].startswith("chatcmpl-")
    assert data["model"] == str(tiny_lm.path)
    choice = data["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": HELLO_ANSWER}
    assert choice["finish_reason"] == "stop"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_lm.folder(tiny_lm.path))
    prompt = tok.apply_chat_template(HELLO, add_generation_prompt=True, tokenize=False)
    expected_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    expected_completion = len(tok(HELLO_ANSWER, add_special_tokens=False)["input_ids"])  # EOS not counted
    assert data["usage"] == {"prompt_tokens": expected_prompt, "completion_tokens": expected_completion,
                             "total_tokens": expected_prompt + expected_completion}


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_cuts_with_length(lm_client: TestClient, tiny_lm: TinyLM, field: str) -> None:
    data = chat(lm_client, tiny_lm.path, **{field: 3}).json()
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 3
    assert HELLO_ANSWER.startswith(data["choices"][0]["message"]["content"])
    assert len(data["choices"][0]["message"]["content"]) < len(HELLO_ANSWER)


def test_multi_token_stop_string_is_honoured_and_not_emitted(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    # "o meet y" spans the tokens " to", " meet" and " you"
    data = chat(lm_client, tiny_lm.path, stop="o meet y").json()
    assert data["choices"][0]["message"]["content"] == HELLO_ANSWER[: HELLO_ANSWER.index("o meet y")]
    assert data["choices"][0]["finish_reason"] == "stop"


def test_stop_list_earliest_wins(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    data = chat(lm_client, tiny_lm.path, stop=["good", "Nice"]).json()
    assert data["choices"][0]["message"]["content"] == "Hello there! "
    data = chat(lm_client, tiny_lm.path, stop=["never appears"]).json()
    assert data["choices"][0]["message"]["content"] == HELLO_ANSWER


def test_n_choices_and_usage_sums_them(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    one = chat(lm_client, tiny_lm.random_path, max_tokens=5).json()
    three = chat(lm_client, tiny_lm.random_path, max_tokens=5, n=3).json()
    assert [c["index"] for c in three["choices"]] == [0, 1, 2]
    assert all(c["message"]["content"] == one["choices"][0]["message"]["content"] for c in three["choices"])
    assert three["usage"]["completion_tokens"] == 15
    assert three["usage"]["prompt_tokens"] == one["usage"]["prompt_tokens"]


def test_seed_reproducible_without_touching_global_rng(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    state = torch.get_rng_state()
    a = chat(lm_client, tiny_lm.random_path, temperature=1.0, seed=7, max_tokens=12).json()
    b = chat(lm_client, tiny_lm.random_path, temperature=1.0, seed=7, max_tokens=12).json()
    c = chat(lm_client, tiny_lm.random_path, temperature=1.0, seed=8, max_tokens=12).json()
    assert torch.equal(state, torch.get_rng_state())
    text = [x["choices"][0]["message"]["content"] for x in (a, b, c)]
    assert text[0] == text[1]
    assert text[0] != text[2]


def test_choice_i_uses_seed_plus_i(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    both = chat(lm_client, tiny_lm.random_path, temperature=1.0, seed=20, max_tokens=8, n=2).json()
    second = chat(lm_client, tiny_lm.random_path, temperature=1.0, seed=21, max_tokens=8).json()
    assert both["choices"][1]["message"]["content"] == second["choices"][0]["message"]["content"]
    assert both["choices"][0]["message"]["content"] != both["choices"][1]["message"]["content"]


def test_logprobs_have_openai_shape(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    data = chat(lm_client, tiny_lm.path, logprobs=True, top_logprobs=3).json()
    content = data["choices"][0]["logprobs"]["content"]
    assert len(content) == data["usage"]["completion_tokens"]
    first = content[0]
    assert first["token"] == "Hello" and first["bytes"] == list(b"Hello")
    assert first["logprob"] <= 0 and len(first["top_logprobs"]) == 3
    assert first["top_logprobs"][0]["token"] == "Hello"  # greedy picks the most likely token
    raw = b"".join(bytes(e["bytes"]) for e in content)
    assert raw.decode() == HELLO_ANSWER  # the emoji's bytes are spread over several tokens
    assert chat(lm_client, tiny_lm.path).json()["choices"][0]["logprobs"] is None


def test_penalties_change_repetitive_output(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    plain = chat(lm_client, tiny_lm.random_path, max_tokens=30).json()["choices"][0]["message"]["content"]
    penalized = chat(lm_client, tiny_lm.random_path, max_tokens=30, frequency_penalty=2.0,
                     presence_penalty=2.0).json()["choices"][0]["message"]["content"]
    assert plain != penalized
    assert len(set(penalized)) > len(set(plain))


def test_model_without_template_uses_plain_text_fallback(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    from transformers import AutoTokenizer

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    data = lm_client.post("/v1/chat/completions", json={"model": str(tiny_lm.random_path), "messages": messages,
                                                         "max_tokens": 2}).json()
    tok = AutoTokenizer.from_pretrained(tiny_lm.folder(tiny_lm.random_path))
    assert tok.chat_template is None
    expected = tok("System: Be brief.\nUser: Hi\nAssistant:")["input_ids"]
    assert data["usage"]["prompt_tokens"] == len(expected)


@pytest.mark.parametrize(("field", "value", "param"), [
    ("temperature", 2.5, "temperature"), ("temperature", -1, "temperature"), ("top_p", 1.5, "top_p"),
    ("n", 0, "n"), ("max_tokens", 0, "max_tokens"), ("presence_penalty", 3, "presence_penalty"),
    ("top_logprobs", 2, "top_logprobs"), ("messages", [], "messages"), ("stop", 5, "stop"),
])
def test_bad_values_are_400_naming_the_field(lm_client: TestClient, tiny_lm: TinyLM, field: str, value: Any,
                                             param: str) -> None:
    r = chat(lm_client, tiny_lm.path, **{field: value})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


USER = {"role": "user", "content": "Hi"}
CALL = {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                             "function": {"name": "f", "arguments": "{}"}}]}


@pytest.mark.parametrize(("messages", "param"), [
    ([{"role": "user"}], "messages.0.content"),
    ([{"role": "user", "content": None}], "messages.0.content"),
    ([{"role": "system"}, USER], "messages.0.content"),
    ([{"role": "developer", "content": None}, USER], "messages.0.content"),
    ([USER, {"role": "assistant"}], "messages.1.content"),
    ([USER, {"role": "assistant", "content": None, "tool_calls": []}], "messages.1.content"),
    ([USER, CALL, {"role": "tool", "content": "42"}], "messages.2.tool_call_id"),
    ([USER, CALL, {"role": "tool", "tool_call_id": "c1"}], "messages.2.content"),
    ([{"role": "bot", "content": "Hi"}], "messages.0.role"),
    ([{"content": "Hi"}], "messages.0.role"),
    ([{"role": "user", "content": []}], "messages.0.content"),
    ([{"role": "user", "content": [{"type": "text"}]}], "messages.0.content.0.text"),
    ([{"role": "user", "content": [{"text": "Hi"}]}], "messages.0.content.0.type"),
])
def test_malformed_messages_are_400_naming_the_field(lm_client: TestClient, tiny_lm: TinyLM,
                                                     messages: list[dict[str, Any]], param: str) -> None:
    r = lm_client.post("/v1/chat/completions", json={"model": str(tiny_lm.path), "messages": messages})
    assert_envelope(r, 400, "invalid_value", param)


def test_assistant_tool_calls_need_no_content(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    messages = [USER, CALL, {"role": "tool", "tool_call_id": "c1", "content": "42"}, USER]
    r = lm_client.post("/v1/chat/completions", json={"model": str(tiny_lm.path), "messages": messages,
                                                     "max_tokens": 2})
    assert r.status_code == 200, r.text


def test_image_parts_on_text_model_are_400(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "what is this"},
                                             {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]}]
    r = lm_client.post("/v1/chat/completions", json={"model": str(tiny_lm.path), "messages": messages})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "messages.0.content.1"


def test_text_parts_are_joined(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": HELLO_PROMPT}]}]
    r = lm_client.post("/v1/chat/completions", json={"model": str(tiny_lm.path), "messages": messages,
                                                     "temperature": 0})
    assert r.json()["choices"][0]["message"]["content"] == HELLO_ANSWER


def test_unknown_fields_are_ignored(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    r = chat(lm_client, tiny_lm.path, n_ctx=2048, huggingface_token=None, extra_body={"x": 1}, max_tokens=2)
    assert r.status_code == 200


def test_prompt_longer_than_context_is_400(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    long = [{"role": "user", "content": "hello " * 600}]
    r = lm_client.post("/v1/chat/completions", json={"model": str(tiny_lm.path), "messages": long})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_non_causal_model_is_unsupported(lm_client: TestClient, tmp_path: Any) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    r = lm_client.post("/v1/chat/completions", json={"model": str(tmp_path), "messages": HELLO})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "unsupported_model_type"


def test_quantization_without_cuda_is_a_clear_400() -> None:
    from core.contract import LoadContext
    from core.errors import InvalidRequest
    from models.language.weights import quantization_config

    assert quantization_config(LoadContext(options={"quantization": "none"})) is None
    with pytest.raises(InvalidRequest, match="CUDA") as info:
        quantization_config(LoadContext(device="cpu", options={"quantization": "4bit"}))
    assert info.value.param == "quantization"


def test_generation_metrics_are_recorded(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    chat(lm_client, tiny_lm.path, max_tokens=2)
    text = lm_client.get("/metrics").text
    assert "universal_runtime_generated_tokens_total{" in text
    assert "universal_runtime_time_to_first_token_seconds_count{" in text


def test_model_options_set_sampling_defaults(tiny_lm: TinyLM) -> None:
    transformers_only(tiny_lm)  # builds the spec of a folder
    from core.contract import LoadContext
    from core.resolve import ModelSpec
    from models.language.loader import load

    spec = ModelSpec(requested="t", key="t", category="causal", path=tiny_lm.path)
    lm = load(spec, LoadContext(options={"temperature": 0.3, "top_k": 5}))
    try:
        prepared = lm.prepare_completion("hi")
        params = lm.sampling_params(prepared, {"temperature": None, "top_p": 0.5})
        assert (params.temperature, params.top_k, params.top_p) == (0.3, 5, 0.5)
        assert lm.sampling_params(prepared, {"temperature": 1.2}).temperature == 1.2
        assert params.max_new_tokens == lm.context_length - len(prepared.input_ids)
    finally:
        lm.close()
