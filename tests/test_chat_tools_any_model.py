"""Tool calling on a chat model whose template has no tool support (the tiny `path` model, the packaged SmolLM2):
the runtime writes the tools into the system prompt (models/language/tool_prompt.py), a required or named
`tool_choice` makes the answer a valid call of that function, `parallel_tool_calls` bounds the number of calls,
streaming sends tool-call deltas, and earlier tool turns are rendered as text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from models.language import tool_prompt
from tests.fixtures.language import ENGINES, HELLO_PROMPT, WEATHER_TOOL, TinyLM

BOTH_ENGINES = True

MOOD_TOOL = {"type": "function", "function": {"name": "set_mood", "description": "Set the mood", "parameters": {
    "type": "object", "properties": {"mood": {"enum": ["happy", "sad"]}, "level": {"enum": [1, 2, 3]}},
    "required": ["mood", "level"], "additionalProperties": False}}}
COLOR_TOOL = {"type": "function", "function": {"name": "set_color", "parameters": {
    "type": "object", "properties": {"color": {"enum": ["red", "blue"]}}, "required": ["color"]}}}
HELLO = [{"role": "user", "content": HELLO_PROMPT}]


def chat(client: TestClient, lm: TinyLM, **fields: Any) -> Any:
    body = {"model": str(lm.path), "messages": HELLO, "temperature": 0, "max_tokens": 60,
            "tools": [WEATHER_TOOL, MOOD_TOOL], **fields}
    return client.post("/v1/chat/completions", json=body)


def _valid_mood(arguments: str) -> bool:
    args = json.loads(arguments)
    return set(args) == {"mood", "level"} and args["mood"] in ("happy", "sad") and args["level"] in (1, 2, 3)


def test_a_named_tool_choice_is_a_valid_call_of_that_function(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    r = chat(lm_client, tiny_lm, tool_choice={"type": "function", "function": {"name": "set_mood"}})
    assert r.status_code == 200, r.text
    assert "x-ignored-params" not in r.headers
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls", choice
    calls = choice["message"]["tool_calls"]
    assert calls and all(c["function"]["name"] == "set_mood" and _valid_mood(c["function"]["arguments"])
                         for c in calls)


def test_required_is_a_call_of_one_of_the_tools(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    choice = chat(lm_client, tiny_lm, tools=[COLOR_TOOL, MOOD_TOOL], tool_choice="required").json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    for call in choice["message"]["tool_calls"]:
        name, args = call["function"]["name"], call["function"]["arguments"]
        assert (name == "set_color" and json.loads(args) in ({"color": "red"}, {"color": "blue"})) or \
            (name == "set_mood" and _valid_mood(args))


def test_parallel_tool_calls_false_is_exactly_one_call(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    one = chat(lm_client, tiny_lm, tools=[MOOD_TOOL], tool_choice="required", parallel_tool_calls=False,
               max_tokens=200).json()["choices"][0]
    assert len(one["message"]["tool_calls"]) == 1 and one["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(("tool_choice", "parallel", "text", "accepted"), [
    ("required", True, "<tool_call>\n{CALL}\n</tool_call>\n<tool_call>\n{CALL}\n</tool_call>", True),
    ("required", False, "<tool_call>\n{CALL}\n</tool_call>\n<tool_call>\n{CALL}\n</tool_call>", False),
    ("required", True, "Just text.", False),
    ("auto", True, "Just text.", True),
    ("auto", True, "<tool_call>\n{CALL}\n</tool_call>", True),
    ("auto", True, "Text, then <tool_call>\n{CALL}\n</tool_call>", False),
    ("auto", True, '<tool_call>\n{"name":"set_mood","arguments":{"mood":"angry","level":1}}\n</tool_call>', False),
])
def test_the_tool_grammar_allows_what_tool_choice_and_parallel_tool_calls_say(
        tiny_lm: TinyLM, tool_choice: str, parallel: bool, text: str, accepted: bool) -> None:
    from transformers import AutoTokenizer

    from models.language.structured import Grammars, tool_call_grammar

    if tiny_lm.engine != "transformers":
        pytest.skip("a grammar check: the engine does not matter")
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm.path)
    grammar = tool_call_grammar([MOOD_TOOL], None, True, parallel, allow_text=tool_choice == "auto")
    matcher = Grammars(tokenizer, len(tokenizer), {tokenizer.eos_token_id}).matcher(grammar, "tools")
    text = text.replace("{CALL}", '{"name":"set_mood","arguments":{"mood":"sad","level":2}}')
    ok = matcher.consume_tokens(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert (ok and matcher.is_accepting()) == accepted


def test_a_forced_call_streams_as_tool_call_deltas(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    body = {"model": str(tiny_lm.path), "messages": HELLO, "temperature": 0, "max_tokens": 60, "stream": True,
            "tools": [MOOD_TOOL], "tool_choice": {"type": "function", "function": {"name": "set_mood"}}}
    with lm_client.stream("POST", "/v1/chat/completions", json=body) as r:
        frames = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    deltas = [f["choices"][0]["delta"] for f in frames if f["choices"]]
    calls = [c for d in deltas for c in d.get("tool_calls", [])]
    assert calls and calls[0]["function"]["name"] == "set_mood" and calls[0]["id"].startswith("call_")
    assert _valid_mood("".join(c["function"]["arguments"] for c in calls if c["index"] == 0))
    assert frames[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert not any(d.get("content") for d in deltas)


def test_tool_turns_of_the_conversation_are_rendered_for_a_template_without_tools(lm_client: TestClient,
                                                                                  tiny_lm: TinyLM) -> None:
    messages = [*HELLO, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    r = chat(lm_client, tiny_lm, messages=messages)
    assert r.status_code == 200, r.text


@pytest.mark.slow
def test_the_packaged_smollm2_answers_from_a_tool_result(client_factory: Any, smollm2_path: Path) -> None:
    r = client_factory().post("/v1/chat/completions", json={"model": "default", "max_tokens": 40, "messages": [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"}]})
    assert r.status_code == 200, r.text
    assert "sunny" in r.json()["choices"][0]["message"]["content"].lower()


def test_the_tools_block_and_tool_turns_as_text() -> None:
    msgs = tool_prompt.with_tools([{"role": "system", "content": "Be brief."}, *HELLO], [WEATHER_TOOL])
    assert msgs[0]["content"].startswith("Be brief.\n\n# Tools") and '"name": "get_weather"' in msgs[0]["content"]
    assert tool_prompt.with_tools(HELLO, [WEATHER_TOOL])[0]["role"] == "system"
    turns = tool_prompt.plain_tool_turns([
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "a", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"id": "b", "function": {"name": "get_time", "arguments": '{"city": "Rome"}'}}]},
        {"role": "tool", "content": "sunny", "tool_call_id": "a"}, {"role": "tool", "content": "noon",
                                                                     "tool_call_id": "b"}])
    assert turns == [
        {"role": "assistant", "content": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
                                         '</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": '
                                         '{"city": "Rome"}}\n</tool_call>'},
        {"role": "user", "content": "The function get_weather returned: sunny\nThe function get_time returned: "
                                    "noon\nUse these results to answer."}]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_the_packaged_smollm2_makes_a_valid_forced_call(client_factory: Any, smollm2_path: Path, engine: str,
                                                        tmp_path: Path) -> None:
    from models.language import llama_cpp_missing

    if engine == "llama.cpp" and llama_cpp_missing():
        pytest.skip(f"llama-cpp-python is not available: {llama_cpp_missing()}")
    config = tmp_path / "models.yaml"
    config.write_text(f"version: 1\nmodels:\n  HuggingFaceTB/SmolLM2-135M-Instruct:\n    engine: {engine}\n")
    r = client_factory(config=config).post("/v1/chat/completions", json={
        "model": "default", "max_tokens": 60, "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}]})
    assert r.status_code == 200, r.text
    (call, *_) = r.json()["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert isinstance(json.loads(call["function"]["arguments"])["city"], str)
