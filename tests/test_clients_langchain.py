"""LangChain's `ChatOpenAI` (langchain-openai, the `clients` test extra) against the packaged SmolLM2, the
runtime's default chat model, through the real HTTP stack: plain and streamed chat, `bind_tools` with a forced
`tool_choice`, `with_structured_output` with all three methods, and the Responses API
(`use_responses_api=True`). Every structured answer must validate against its schema.
`scripts/sdk_table.py` turns the outcomes into docs/sdk-compatibility.md."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field

from tests.sdk_calls import sdk_call

langchain_openai = pytest.importorskip("langchain_openai", reason="the `clients` test extra is not installed")

QUESTION = "Which city is the capital of France?"
WEATHER_QUESTION = "What is the weather in Paris, in celsius?"


class Weather(BaseModel):
    """Ask for the weather of a city."""

    city: str = Field(description="the city")
    unit: Literal["celsius", "fahrenheit"] = Field(description="the temperature unit")


def get_weather(city: str, unit: Literal["celsius", "fahrenheit"]) -> str:
    """Get the weather of a city.

    Args:
        city: the city
        unit: the temperature unit
    """
    return f"sunny in {city}"


@pytest.fixture(scope="module")
def app_client(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from server import create_app
    from tests.conftest import make_settings

    with TestClient(create_app(make_settings(tmp_path_factory.mktemp("langchain")))) as client:
        yield client


def chat_model(client: Any, **kwargs: Any) -> Any:
    return langchain_openai.ChatOpenAI(model="default", base_url="http://testserver/v1", api_key="x",
                                       http_client=client, max_retries=0, temperature=0, max_tokens=60, **kwargs)


@sdk_call("langchain ChatOpenAI.invoke / .stream", "clients")
@pytest.mark.slow
def test_invoke_and_stream(app_client: Any) -> None:
    llm = chat_model(app_client)
    assert "Paris" in llm.invoke(QUESTION).content
    chunks = list(llm.stream(QUESTION))
    assert len(chunks) > 2 and "Paris" in "".join(str(c.content) for c in chunks)


@sdk_call("langchain ChatOpenAI.bind_tools(tool_choice=name)", "clients")
@pytest.mark.slow
def test_bind_tools_with_a_forced_tool_choice_makes_a_valid_call(app_client: Any) -> None:
    message = chat_model(app_client).bind_tools([get_weather], tool_choice="get_weather").invoke(WEATHER_QUESTION)
    (call,) = message.tool_calls
    assert call["name"] == "get_weather"
    Weather.model_validate(call["args"])


@sdk_call("langchain ChatOpenAI.with_structured_output(method={method})", "clients")
@pytest.mark.slow
@pytest.mark.parametrize("method", ["function_calling", "json_schema", "json_mode"])
def test_with_structured_output_validates(app_client: Any, method: str) -> None:
    question = WEATHER_QUESTION
    if method == "json_mode":  # the schema travels in the prompt only (LangChain's advice for json_mode)
        question += ' Answer in JSON with keys "city" and "unit" ("celsius" or "fahrenheit").'
    out = chat_model(app_client).with_structured_output(Weather, method=method, include_raw=True).invoke(question)
    assert out["parsing_error"] is None, out["raw"]
    assert isinstance(out["parsed"], Weather) and out["parsed"].city


@sdk_call("langchain ChatOpenAI(use_responses_api=True)", "clients")
@pytest.mark.slow
def test_the_responses_api(app_client: Any) -> None:
    llm = chat_model(app_client, use_responses_api=True)
    assert "Paris" in llm.invoke(QUESTION).text
    message = llm.bind_tools([get_weather], tool_choice="get_weather").invoke(WEATHER_QUESTION)
    (call,) = message.tool_calls
    assert call["name"] == "get_weather"
    Weather.model_validate(call["args"])
    parsed = llm.with_structured_output(Weather, method="json_schema").invoke(WEATHER_QUESTION)
    assert isinstance(parsed, Weather)
