"""OpenAI SDK suite, Responses half: the official `openai` package's `responses.create`, `responses.stream`,
`responses.parse`, function tools with a `function_call_output` round trip, `previous_response_id`, and the
stored responses (`retrieve`, `delete`, `input_items.list`), in-process over the real HTTP stack on the tiny
chat models, both engines. Bad input is a 400 / 404 naming the field."""

from __future__ import annotations

import json
from typing import Any, Literal

import pytest
from fastapi.testclient import TestClient
from openai import NotFoundError, OpenAI
from pydantic import BaseModel

from tests.fixtures.language import HELLO_ANSWER, HELLO_PROMPT, WEATHER_PROMPT, TinyLM
from tests.sdk_calls import sdk_call

BOTH_ENGINES = True

WEATHER_FN = {"type": "function", "name": "get_weather", "description": "Weather of a city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
MOOD_FN = {"type": "function", "name": "set_mood", "parameters": {
    "type": "object", "properties": {"mood": {"enum": ["happy", "sad"]}}, "required": ["mood"]}}


@pytest.fixture
def sdk(lm_client: TestClient) -> OpenAI:
    return OpenAI(base_url="http://testserver/v1", api_key="x", http_client=lm_client, max_retries=0)


@sdk_call("client.responses.create(input=str)", "responses")
def test_create_with_a_string_input(sdk: OpenAI, tiny_lm: TinyLM) -> None:
    out = sdk.responses.create(model=str(tiny_lm.path), input=HELLO_PROMPT, temperature=0)
    assert out.object == "response" and out.id.startswith("resp_") and out.status == "completed"
    assert out.output_text == HELLO_ANSWER and out.model == str(tiny_lm.path)
    (item,) = out.output
    assert item.type == "message" and item.role == "assistant" and item.status == "completed"
    assert out.usage is not None and out.usage.input_tokens > 0 and out.usage.output_tokens > 0
    assert out.usage.total_tokens == out.usage.input_tokens + out.usage.output_tokens


@sdk_call("client.responses.create(input=[message items], instructions=...)", "responses")
def test_create_with_message_items_and_instructions(sdk: OpenAI, tiny_lm: TinyLM) -> None:
    out = sdk.responses.create(model=str(tiny_lm.path), instructions="Be kind.", temperature=0, input=[
        {"role": "user", "content": [{"type": "input_text", "text": HELLO_PROMPT}]}])
    assert out.status == "completed" and out.output_text and out.instructions == "Be kind."


@sdk_call("client.responses.create(max_output_tokens=...) -> incomplete", "responses")
def test_max_output_tokens_makes_it_incomplete(sdk: OpenAI, tiny_lm: TinyLM) -> None:
    out = sdk.responses.create(model=str(tiny_lm.random_path), input=HELLO_PROMPT, max_output_tokens=3,
                               temperature=0)  # greedy: the random model's answer is fixed, longer than 3 tokens
    assert out.status == "incomplete" and out.incomplete_details is not None
    assert out.incomplete_details.reason == "max_output_tokens" and out.usage.output_tokens == 3


@sdk_call("client.responses.stream(...)", "responses")
def test_stream_sends_the_documented_events(sdk: OpenAI, tiny_lm: TinyLM) -> None:
    with sdk.responses.stream(model=str(tiny_lm.path), input=HELLO_PROMPT, temperature=0) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert kinds.count("response.output_text.delta") >= 2
    assert final.output_text == HELLO_ANSWER and final.status == "completed"


@sdk_call("client.responses.create(stream=True) sequence numbers", "responses")
def test_stream_events_are_numbered_in_order(sdk: OpenAI, tiny_lm: TinyLM) -> None:
    events = list(sdk.responses.create(model=str(tiny_lm.path), input=HELLO_PROMPT, temperature=0, stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == HELLO_ANSWER


class Mood(BaseModel):
    mood: Literal["happy", "sad"]  # bounded: the random tiny model would write a string until max tokens


@sdk_call("client.responses.parse(text_format=PydanticModel)", "responses")
def test_parse_fills_output_parsed_from_the_json_schema(sdk: OpenAI, tiny_lm: TinyLM) -> None:
    out = sdk.responses.parse(model=str(tiny_lm.random_path), input=HELLO_PROMPT, text_format=Mood,
                              max_output_tokens=60, temperature=0)
    assert isinstance(out.output_parsed, Mood) and out.output_parsed.mood in ("happy", "sad")


@sdk_call("client.responses.create(text={format: json_object})", "responses")
def test_json_object_format_is_json(sdk: OpenAI, tiny_lm: TinyLM) -> None:
    out = sdk.responses.create(model=str(tiny_lm.random_path), input=HELLO_PROMPT, max_output_tokens=40,
                               temperature=0, text={"format": {"type": "json_object"}})
    if out.status == "completed":
        assert isinstance(json.loads(out.output_text), dict)


@sdk_call("client.responses.create(tools=[function], tool_choice=...) + function_call_output", "responses")
def test_function_tools_round_trip(sdk: OpenAI, tiny_lm: TinyLM) -> None:
    model = str(tiny_lm.tools_path)
    first = sdk.responses.create(model=model, input=WEATHER_PROMPT, tools=[WEATHER_FN], temperature=0)
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert call.call_id.startswith("call_") and call.status == "completed"
    follow = sdk.responses.create(model=model, tools=[WEATHER_FN], temperature=0, max_output_tokens=10, input=[
        {"role": "user", "content": WEATHER_PROMPT}, call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert follow.status in ("completed", "incomplete")
    # the same turn through the stored conversation
    chained = sdk.responses.create(model=model, previous_response_id=first.id, tools=[WEATHER_FN], temperature=0,
                                   max_output_tokens=10, input=[
                                       {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert chained.previous_response_id == first.id


@sdk_call("client.responses.create(tool_choice={type: function}) on a model without tool support", "responses")
def test_a_forced_function_call_on_a_model_without_tool_support(sdk: OpenAI, tiny_lm: TinyLM) -> None:
    out = sdk.responses.create(model=str(tiny_lm.path), input=HELLO_PROMPT, tools=[MOOD_FN],
                               tool_choice={"type": "function", "name": "set_mood"}, temperature=0)
    (call,) = out.output
    assert call.type == "function_call" and json.loads(call.arguments)["mood"] in ("happy", "sad")


@sdk_call("client.responses.stream(tools=[function]) function call events", "responses")
def test_stream_sends_function_call_argument_events(sdk: OpenAI, tiny_lm: TinyLM) -> None:
    with sdk.responses.stream(model=str(tiny_lm.path), input=HELLO_PROMPT, tools=[MOOD_FN],
                              tool_choice={"type": "function", "name": "set_mood"}, temperature=0) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds
    assert final.output[-1].type == "function_call" and json.loads(final.output[-1].arguments)["mood"]


@sdk_call("client.responses.retrieve / delete / input_items.list", "responses")
def test_stored_responses_can_be_retrieved_listed_continued_and_deleted(sdk: OpenAI, tiny_lm: TinyLM) -> None:
    model = str(tiny_lm.path)
    first = sdk.responses.create(model=model, input=HELLO_PROMPT, temperature=0)
    assert sdk.responses.retrieve(first.id).output_text == HELLO_ANSWER
    second = sdk.responses.create(model=model, input=HELLO_PROMPT, previous_response_id=first.id, temperature=0)
    items = sdk.responses.input_items.list(second.id, order="asc").data
    roles = [getattr(i, "role", None) for i in items]
    assert roles == ["user", "assistant", "user"]  # the first turn, its answer, the new input
    sdk.responses.delete(first.id)
    with pytest.raises(NotFoundError):
        sdk.responses.retrieve(first.id)
    with pytest.raises(NotFoundError) as info:
        sdk.responses.create(model=model, input="hi", previous_response_id=first.id)
    assert info.value.body["param"] == "previous_response_id"  # type: ignore[index]


def test_store_false_is_not_stored(sdk: OpenAI, tiny_lm: TinyLM) -> None:
    out = sdk.responses.create(model=str(tiny_lm.path), input=HELLO_PROMPT, store=False, max_output_tokens=2)
    with pytest.raises(NotFoundError):
        sdk.responses.retrieve(out.id)


@pytest.mark.parametrize(("fields", "param"), [
    ({"input": [{"type": "function_call_output", "call_id": "call_nope", "output": "x"}]}, "input.0.call_id"),
    ({"input": [{"type": "banana"}]}, "input.0.type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,AA"}]}]},
     "input.0.content.0"),
    ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools.0.type"),
    ({"input": "hi", "tools": [{"type": "file_search", "vector_store_ids": ["x"]}]}, "tools.0.type"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
    ({"input": "hi", "tool_choice": {"type": "function", "name": "nope"}, "tools": [WEATHER_FN]}, "tool_choice"),
    ({}, "input"),
])
def test_bad_input_is_a_400_naming_the_field(lm_client: TestClient, tiny_lm: TinyLM, fields: dict[str, Any],
                                            param: str) -> None:
    r = lm_client.post("/v1/responses", json={"model": str(tiny_lm.path), **fields})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and r.json()["error"]["type"] == "invalid_request_error"


def test_unused_known_fields_are_reported_ignored(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    r = lm_client.post("/v1/responses", json={"model": str(tiny_lm.path), "input": "hi", "max_output_tokens": 2,
                                              "reasoning": {"effort": "low"}, "truncation": "auto"})
    assert r.status_code == 200
    assert set(r.headers["x-ignored-params"].split(",")) == {"reasoning", "truncation"}


def test_an_unknown_response_id_is_a_404_envelope(lm_client: TestClient) -> None:
    for r in (lm_client.get("/v1/responses/resp_nope"), lm_client.delete("/v1/responses/resp_nope"),
              lm_client.get("/v1/responses/resp_nope/input_items")):
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "not_found" and r.json()["error"]["param"] == "response_id"
