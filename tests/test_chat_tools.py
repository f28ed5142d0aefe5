"""Tools: passed to tool-capable templates, tool calls parsed (also while streaming), history messages
rendered, forced calls; a model without tool support gets the tools from the runtime (test_chat_tools_any_model.py)."""

from __future__ import annotations

import json
from typing import Any

from fastapi.testclient import TestClient

from models.language.tools import ToolStreamParser, parse_tool_calls
from tests.fixtures.language import HELLO_ANSWER, HELLO_PROMPT, WEATHER_PROMPT, WEATHER_TOOL, TinyLM

BOTH_ENGINES = True  # every test using the tiny chat models runs on transformers and on llama.cpp

WEATHER = [{"role": "user", "content": WEATHER_PROMPT}]


def chat(client: TestClient, model: Any, messages: list[Any], **fields: Any) -> Any:
    body = {"model": str(model), "messages": messages, "temperature": 0, "tools": [WEATHER_TOOL], **fields}
    return client.post("/v1/chat/completions", json=body)


def test_tool_call_becomes_tool_calls(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    r = chat(lm_client, tiny_lm.tools_path, WEATHER)
    assert r.status_code == 200, r.text
    assert "x-ignored-params" not in r.headers
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}


def test_plain_answer_with_tools_stays_content(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    choice = chat(lm_client, tiny_lm.tools_path, [{"role": "user", "content": HELLO_PROMPT}]).json()["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": HELLO_ANSWER}
    assert choice["finish_reason"] == "stop"


def test_tool_calls_stream_as_deltas(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    body = {"model": str(tiny_lm.tools_path), "messages": WEATHER, "temperature": 0, "tools": [WEATHER_TOOL],
            "stream": True}
    with lm_client.stream("POST", "/v1/chat/completions", json=body) as r:
        frames = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    deltas = [f["choices"][0]["delta"] for f in frames]
    assert not any(d.get("content") for d in deltas)  # the <tool_call> markup never leaks as content
    calls = [d["tool_calls"] for d in deltas if "tool_calls" in d]
    assert len(calls) == 1
    assert calls[0][0]["index"] == 0 and calls[0][0]["function"]["name"] == "get_weather"
    assert json.loads(calls[0][0]["function"]["arguments"]) == {"city": "Paris"}
    assert frames[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_tool_history_goes_through_the_template(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    history = WEATHER + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    r = chat(lm_client, tiny_lm.tools_path, history, max_tokens=1)
    assert r.status_code == 200, r.text
    model = lm_client.app.state.manager.find(str(tiny_lm.tools_path))[0].model  # type: ignore[attr-defined]
    prepared = model.prepare_chat(history, tools=[WEATHER_TOOL])
    prompt = model.tokenizer.decode(prepared.input_ids)
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt
    assert "<tool_response>\nsunny, 21 C\n</tool_response>" in prompt
    assert r.json()["usage"]["prompt_tokens"] == len(prepared.input_ids)


def test_tools_on_model_without_tool_support_are_no_longer_ignored(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    r = chat(lm_client, tiny_lm.path, [{"role": "user", "content": HELLO_PROMPT}], tool_choice="auto")
    assert r.status_code == 200, r.text
    assert "x-ignored-params" not in r.headers  # the runtime wrote the tools into the prompt itself
    message = r.json()["choices"][0]["message"]
    if message.get("tool_calls"):  # auto: the grammar allows text or valid calls, nothing else
        assert all(c["function"]["name"] == "get_weather" and "city" in json.loads(c["function"]["arguments"])
                   for c in message["tool_calls"])
    else:
        assert message["content"] and not message["content"].startswith("<")


def test_tool_choice_none_answers_in_text(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    choice = chat(lm_client, tiny_lm.tools_path, [{"role": "user", "content": HELLO_PROMPT}],
                  tool_choice="none").json()["choices"][0]
    assert choice["finish_reason"] == "stop" and "tool_calls" not in choice["message"]


MOOD_TOOL = {"type": "function", "function": {"name": "set_mood", "parameters": {
    "type": "object", "properties": {"mood": {"enum": ["happy", "sad"]}}, "required": ["mood"],
    "additionalProperties": False}}}


def test_forced_tool_choice_makes_a_valid_call_the_model_would_not_make(lm_client: TestClient,
                                                                       tiny_lm: TinyLM) -> None:
    hello = [{"role": "user", "content": HELLO_PROMPT}]
    for choice_field in ({"type": "function", "function": {"name": "set_mood"}}, "required"):
        r = chat(lm_client, tiny_lm.tools_path, hello, tools=[MOOD_TOOL], tool_choice=choice_field,
                 temperature=1.0, seed=3, max_tokens=60)
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] == "tool_calls", choice
        (call,) = choice["message"]["tool_calls"]
        assert call["function"]["name"] == "set_mood"
        assert json.loads(call["function"]["arguments"])["mood"] in ("happy", "sad")


def test_unknown_forced_tool_is_400(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    r = chat(lm_client, tiny_lm.tools_path, WEATHER, tool_choice={"type": "function", "function": {"name": "x"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice"


def test_parser_formats() -> None:
    content, calls = parse_tool_calls('Sure.<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>'
                                      '<tool_call>{"name": "b", "arguments": {}}</tool_call>')
    assert content == "Sure." and [c.name for c in calls] == ["a", "b"]
    assert json.loads(calls[0].arguments) == {"x": 1}
    _, calls = parse_tool_calls('<|python_tag|>{"name": "search", "parameters": {"q": "x"}}')
    assert calls[0].name == "search" and json.loads(calls[0].arguments) == {"q": "x"}
    _, calls = parse_tool_calls('[TOOL_CALLS] [{"name": "f", "arguments": {"a": 2}}]')
    assert calls[0].name == "f"
    assert parse_tool_calls("just text {not json") == ("just text {not json", [])
    assert parse_tool_calls('{"answer": 42}') == ('{"answer": 42}', [])


def test_stream_parser_holds_back_only_possible_markup() -> None:
    p = ToolStreamParser()
    out = "".join(p.feed(piece) for piece in ["Hel", "lo <to", "ol", "_call>", '{"name": "f", ', '"arguments": {}}',
                                               "</tool_call>"])
    assert out == "Hello "
    rest, calls = p.finish()
    assert rest == "" and calls[0].name == "f"
    p = ToolStreamParser()
    out = "".join(p.feed(piece) for piece in ["<", "b>bold</b> <tool", " no"])
    assert out + p.finish()[0] == "<b>bold</b> <tool no"


def test_json_naming_no_known_tool_is_content() -> None:
    text = '{"name": "Bob", "arguments": {"age": 3}}'
    assert parse_tool_calls(text, {"get_weather"}) == (text, [])
    p = ToolStreamParser({"get_weather"})
    assert p.feed(text) == ""
    assert p.finish() == (text, [])


def test_a_call_repeated_word_for_word_is_reported_once() -> None:
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    other = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
    _, calls = parse_tool_calls(f"{call}\n{call}\n{other}\n{call}")
    assert [json.loads(c.arguments)["city"] for c in calls] == ["Paris", "Rome"]
