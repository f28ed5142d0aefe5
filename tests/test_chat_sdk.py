"""The official OpenAI Python SDK, in-process, against chat, streaming chat and completions."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from openai import BadRequestError, OpenAI

from tests.fixtures.language import (
    COMPLETION_ANSWER,
    COMPLETION_PROMPT,
    HELLO_ANSWER,
    HELLO_PROMPT,
    WEATHER_PROMPT,
    WEATHER_TOOL,
    TinyLM,
)

BOTH_ENGINES = True  # every test using the tiny chat models runs on transformers and on llama.cpp


@pytest.fixture
def sdk(lm_client: TestClient) -> OpenAI:
    return OpenAI(base_url="http://testserver/v1", api_key="x", http_client=lm_client)


def test_sdk_chat(sdk: OpenAI, tiny_lm: TinyLM) -> None:
    out = sdk.chat.completions.create(model=str(tiny_lm.path), temperature=0, logprobs=True, top_logprobs=1,
                                      messages=[{"role": "user", "content": HELLO_PROMPT}])
    assert out.choices[0].message.content == HELLO_ANSWER
    assert out.choices[0].finish_reason == "stop"
    assert out.usage is not None and out.usage.completion_tokens > 0
    assert out.choices[0].logprobs is not None and out.choices[0].logprobs.content[0].token == "Hello"


def test_sdk_streaming_chat(sdk: OpenAI, tiny_lm: TinyLM) -> None:
    stream = sdk.chat.completions.create(model=str(tiny_lm.path), temperature=0, stream=True,
                                         stream_options={"include_usage": True},
                                         messages=[{"role": "user", "content": HELLO_PROMPT}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == HELLO_ANSWER
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_sdk_tool_calls_and_stream_helper(sdk: OpenAI, tiny_lm: TinyLM) -> None:
    messages = [{"role": "user", "content": WEATHER_PROMPT}]
    out = sdk.chat.completions.create(model=str(tiny_lm.tools_path), temperature=0, messages=messages,
                                      tools=[WEATHER_TOOL])
    call = out.choices[0].message.tool_calls[0]
    assert out.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    with sdk.chat.completions.stream(model=str(tiny_lm.tools_path), temperature=0, messages=messages,
                                     tools=[WEATHER_TOOL]) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.tool_calls[0].function.name == "get_weather"


def test_sdk_completions(sdk: OpenAI, tiny_lm: TinyLM) -> None:
    out = sdk.completions.create(model=str(tiny_lm.path), prompt=COMPLETION_PROMPT, temperature=0, max_tokens=20)
    assert out.choices[0].text == COMPLETION_ANSWER
    streamed = sdk.completions.create(model=str(tiny_lm.path), prompt=COMPLETION_PROMPT, temperature=0,
                                      max_tokens=20, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == COMPLETION_ANSWER


def test_sdk_sees_400s(sdk: OpenAI, tiny_lm: TinyLM) -> None:
    with pytest.raises(BadRequestError) as info:
        sdk.chat.completions.create(model=str(tiny_lm.path), temperature=5,
                                    messages=[{"role": "user", "content": "x"}])
    assert info.value.body["param"] == "temperature"  # type: ignore[index]
