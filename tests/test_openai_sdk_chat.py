"""OpenAI SDK suite, text half: the official `openai` package (current major version), in-process over the
real HTTP stack, against chat completions, legacy completions and the model list. Assertions are on the SDK's
parsed objects. `scripts/sdk_table.py` turns the outcomes into docs/sdk-compatibility.md."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from openai import AsyncOpenAI, BadRequestError, NotFoundError, OpenAI
from pydantic import BaseModel, Field

from tests.fixtures.language import (
    COMPLETION_ANSWER,
    COMPLETION_PROMPT,
    HELLO_ANSWER,
    HELLO_PROMPT,
    WEATHER_PROMPT,
    WEATHER_TOOL,
    TinyLM,
)
from tests.sdk_calls import sdk_call

BOTH_ENGINES = True  # every test using the tiny chat models runs on transformers and on llama.cpp

HELLO = [{"role": "user", "content": HELLO_PROMPT}]
WEATHER = [{"role": "user", "content": WEATHER_PROMPT}]


@pytest.fixture
def sdk(lm_client: TestClient) -> OpenAI:
    """The SDK on the shared chat app (tiny LMs load once per run)."""
    return OpenAI(base_url="http://testserver/v1", api_key="x", http_client=lm_client, max_retries=0)


@sdk_call("client.chat.completions.create(...)", "chat")
def test_chat_create(sdk: OpenAI, tiny_lm: TinyLM) -> None:
    out = sdk.chat.completions.create(model=str(tiny_lm.path), messages=HELLO, temperature=0, logprobs=True,
                                      top_logprobs=2)
    assert out.object == "chat.completion" and out.id.startswith("chatcmpl-") and out.model == str(tiny_lm.path)
    choice = out.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == HELLO_ANSWER
    assert choice.finish_reason == "stop" and choice.message.tool_calls is None
    assert out.usage is not None and out.usage.prompt_tokens > 0 and out.usage.completion_tokens > 0
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    assert choice.logprobs is not None and choice.logprobs.content is not None
    assert bytes(b for t in choice.logprobs.content for b in t.bytes or []).decode() == HELLO_ANSWER
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in choice.logprobs.content)


@sdk_call("client.chat.completions.create(max_tokens=..., n=2, seed=...)", "chat")
def test_chat_length_n_and_seed(sdk: OpenAI, tiny_lm: TinyLM) -> None:
    out = sdk.chat.completions.create(model=str(tiny_lm.random_path), messages=HELLO, max_tokens=5, n=2, seed=3,
                                      temperature=1.0)
    assert [c.index for c in out.choices] == [0, 1]
    assert all(c.finish_reason == "length" for c in out.choices)
    assert out.usage is not None and out.usage.completion_tokens == 10
    again = sdk.chat.completions.create(model=str(tiny_lm.random_path), messages=HELLO, max_tokens=5, n=2, seed=3,
                                        temperature=1.0)
    assert [c.message.content for c in again.choices] == [c.message.content for c in out.choices]


@sdk_call("client.chat.completions.create(stream=True, stream_options={'include_usage': True})", "chat")
def test_chat_stream_include_usage(sdk: OpenAI, tiny_lm: TinyLM) -> None:
    chunks = list(sdk.chat.completions.create(model=str(tiny_lm.path), messages=HELLO, temperature=0, stream=True,
                                              stream_options={"include_usage": True}))
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == HELLO_ANSWER
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    *frames, last = chunks
    assert last.choices == [] and last.usage is not None and all(c.usage is None for c in frames)
    plain = sdk.chat.completions.create(model=str(tiny_lm.path), messages=HELLO, temperature=0)
    assert last.usage == plain.usage


@sdk_call("client.chat.completions.create(tools=[...])", "chat")
def test_chat_tools_round_trip(sdk: OpenAI, tiny_lm: TinyLM) -> None:
    out = sdk.chat.completions.create(model=str(tiny_lm.tools_path), messages=WEATHER, tools=[WEATHER_TOOL],
                                      tool_choice="auto", temperature=0)
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.id
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    follow_up = [*WEATHER, choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "sunny"}'}]
    answer = sdk.chat.completions.create(model=str(tiny_lm.tools_path), messages=follow_up,  # type: ignore[arg-type]
                                         tools=[WEATHER_TOOL], max_tokens=8, temperature=0)
    assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")


@sdk_call("client.chat.completions.stream(tools=[...]) (streamed tool calls)", "chat")
def test_chat_stream_helper_with_tools(sdk: OpenAI, tiny_lm: TinyLM) -> None:
    with sdk.chat.completions.stream(model=str(tiny_lm.tools_path), messages=WEATHER,  # type: ignore[arg-type]
                                     tools=[WEATHER_TOOL], temperature=0) as stream:
        events = [e.type for e in stream]
        final = stream.get_final_completion()
    assert "tool_calls.function.arguments.done" in events
    [call] = final.choices[0].message.tool_calls or []
    assert final.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}


@sdk_call("client.chat.completions.create(response_format={'type': 'json_object'})", "chat")
def test_chat_json_object(sdk: OpenAI, tiny_lm: TinyLM) -> None:
    out = sdk.chat.completions.create(model=str(tiny_lm.random_path), messages=HELLO, temperature=0, max_tokens=200,
                                      response_format={"type": "json_object"})
    choice = out.choices[0]
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(choice.message.content or ""), dict)
    else:
        assert choice.finish_reason == "length" and (choice.message.content or "").startswith("{")


class Person(BaseModel):
    """The schema of the structured-output test (bounded, so a random model finishes it)."""

    name: str = Field(max_length=8)
    age: int = Field(ge=0, le=150)


@sdk_call("client.chat.completions.parse(response_format=<pydantic model>) (json_schema)", "chat")
def test_chat_parse_json_schema(sdk: OpenAI, tiny_lm: TinyLM) -> None:
    out = sdk.chat.completions.parse(model=str(tiny_lm.random_path), messages=HELLO, response_format=Person,
                                     temperature=0, max_tokens=60)
    message = out.choices[0].message
    assert out.choices[0].finish_reason == "stop" and message.refusal is None
    assert isinstance(message.parsed, Person) and 0 <= message.parsed.age <= 150


@sdk_call("client.completions.create(...)", "completions")
def test_completions_create(sdk: OpenAI, tiny_lm: TinyLM) -> None:
    out = sdk.completions.create(model=str(tiny_lm.path), prompt=COMPLETION_PROMPT, temperature=0, max_tokens=20)
    assert out.object == "text_completion" and out.id.startswith("cmpl-")
    assert out.choices[0].text == COMPLETION_ANSWER and out.choices[0].finish_reason == "stop"
    assert out.usage is not None and out.usage.completion_tokens > 0
    both = sdk.completions.create(model=str(tiny_lm.path), prompt=[COMPLETION_PROMPT, COMPLETION_PROMPT],
                                  temperature=0, max_tokens=20)
    assert [c.text for c in both.choices] == [COMPLETION_ANSWER] * 2


@sdk_call("client.completions.create(stream=True)", "completions")
def test_completions_stream(sdk: OpenAI, tiny_lm: TinyLM) -> None:
    chunks = list(sdk.completions.create(model=str(tiny_lm.path), prompt=COMPLETION_PROMPT, temperature=0,
                                         max_tokens=20, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == COMPLETION_ANSWER
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


@sdk_call("client.models.list()", "models")
def test_models_list(sdk: OpenAI, tiny_lm: TinyLM) -> None:
    sdk.chat.completions.create(model=str(tiny_lm.path), messages=HELLO, max_tokens=1)
    models = list(sdk.models.list())
    by_id = {m.id: m for m in models}
    assert all(m.object == "model" and m.owned_by == "universal-runtime" for m in models)
    loaded = by_id[str(tiny_lm.path)]
    assert loaded.type == "causal" and loaded.status == "loaded"  # type: ignore[attr-defined]
    assert "default" in by_id or "HuggingFaceTB/SmolLM2-135M-Instruct" in by_id


@sdk_call("client.models.retrieve(id)", "models")
def test_models_retrieve(sdk: OpenAI, tiny_lm: TinyLM) -> None:
    sdk.chat.completions.create(model=str(tiny_lm.path), messages=HELLO, max_tokens=1)
    item = sdk.models.retrieve(str(tiny_lm.path))
    assert item.id == str(tiny_lm.path) and item.object == "model" and item.status == "loaded"  # type: ignore[attr-defined]
    packaged = sdk.models.retrieve("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert packaged.id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(NotFoundError):
        sdk.models.retrieve("no-such-org/no-such-model")


@sdk_call("errors: BadRequestError / NotFoundError with the OpenAI error body", "errors")
def test_errors_are_sdk_exceptions(sdk: OpenAI, tiny_lm: TinyLM, tmp_path: Path) -> None:
    with pytest.raises(BadRequestError) as bad:
        sdk.chat.completions.create(model=str(tiny_lm.path), messages=HELLO, temperature=5)
    assert bad.value.code == "invalid_value" and bad.value.param == "temperature"
    with pytest.raises(NotFoundError) as missing:
        sdk.chat.completions.create(model=str(tmp_path / "nothing-here"), messages=HELLO)
    assert missing.value.code == "model_not_found" and missing.value.param == "model"


# ----- AsyncOpenAI over a real socket (how LlamaFarm and most async apps call it) -------------------------
@pytest.fixture(scope="module")
def live_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real uvicorn server (the one `python server.py` runs) on a free loopback port."""
    from server import create_app
    from tests.conftest import make_settings
    from tests.hardening import start_uvicorn

    server, runner, url = start_uvicorn(create_app(make_settings(tmp_path_factory.mktemp("sdk-live"))))
    yield url
    server.handle_exit(signal.SIGTERM, None)
    runner.join(30)


@sdk_call("AsyncOpenAI: await client.chat.completions.create(stream=True)", "chat")
def test_async_chat_stream(live_url: str, tiny_lm: TinyLM) -> None:
    async def run() -> tuple[str, list[str | None], int | None]:
        async with AsyncOpenAI(base_url=live_url + "/v1", api_key="x", max_retries=0) as client:
            stream = await client.chat.completions.create(model=str(tiny_lm.path), messages=HELLO,  # type: ignore[arg-type]
                                                          temperature=0, stream=True,
                                                          stream_options={"include_usage": True})
            text, finishes, usage = "", [], None
            async for chunk in stream:
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
                    finishes.append(chunk.choices[0].finish_reason)
                if chunk.usage:
                    usage = chunk.usage.completion_tokens
            return text, finishes, usage

    text, finishes, usage = asyncio.run(run())
    assert text == HELLO_ANSWER and finishes[-1] == "stop" and usage


@sdk_call("AsyncOpenAI: concurrent await client.chat.completions.create(...)", "chat")
def test_async_concurrent_chats(live_url: str, tiny_lm: TinyLM) -> None:
    async def run() -> list[str | None]:
        async with AsyncOpenAI(base_url=live_url + "/v1", api_key="x", max_retries=0) as client:
            outs = await asyncio.gather(*[client.chat.completions.create(
                model=str(tiny_lm.path), messages=HELLO, temperature=0) for _ in range(4)])  # type: ignore[arg-type]
            return [o.choices[0].message.content for o in outs]

    assert asyncio.run(run()) == [HELLO_ANSWER] * 4
