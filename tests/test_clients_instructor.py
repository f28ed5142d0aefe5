"""instructor (the real library) against the packaged SmolLM2 through the official OpenAI SDK, in its TOOLS,
JSON, JSON_SCHEMA and MD_JSON modes: each call must come back as a validated pydantic object.

instructor is installed without its declared dependencies (scripts/lock.py TEST_NO_DEPS): every release pins
jiter<0.15, which openai 3.x excludes. These tests are the proof that it works with the newer jiter here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field

from tests.sdk_calls import sdk_call

QUESTION = "What is the weather in Paris, in celsius?"
SMALL_MODEL = ("SmolLM2-135M writes the JSON schema from the prompt back instead of an instance; only the "
               "schema-constrained modes (TOOLS, JSON_SCHEMA) are guaranteed on every model")


class Weather(BaseModel):
    """The weather question, as structured data."""

    city: str = Field(description="the city")
    unit: Literal["celsius", "fahrenheit"] = Field(description="the temperature unit")


@pytest.fixture(scope="module")
def sdk(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from fastapi.testclient import TestClient
    from openai import OpenAI

    from server import create_app
    from tests.conftest import make_settings

    with TestClient(create_app(make_settings(tmp_path_factory.mktemp("instructor")))) as client:
        yield OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client, max_retries=0)


def extract(sdk: Any, mode: str) -> Weather:
    """One instructor call in `mode`, no retries: the first answer must validate."""
    import instructor

    client = instructor.from_openai(sdk, mode=getattr(instructor.Mode, mode))
    return client.chat.completions.create(model="default", response_model=Weather, max_retries=0, temperature=0,
                                          max_tokens=80, messages=[{"role": "user", "content": QUESTION}])


@sdk_call("instructor Mode.TOOLS", "clients")
@pytest.mark.slow
def test_tools_mode(sdk: Any) -> None:
    weather = extract(sdk, "TOOLS")
    assert isinstance(weather, Weather) and weather.city


@sdk_call("instructor Mode.JSON_SCHEMA", "clients")
@pytest.mark.slow
def test_json_schema_mode(sdk: Any) -> None:
    weather = extract(sdk, "JSON_SCHEMA")
    assert isinstance(weather, Weather) and weather.city


@sdk_call("instructor Mode.JSON", "clients")
@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=SMALL_MODEL)
def test_json_mode(sdk: Any) -> None:
    assert isinstance(extract(sdk, "JSON"), Weather)


@sdk_call("instructor Mode.MD_JSON", "clients")
@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=SMALL_MODEL)
def test_md_json_mode(sdk: Any) -> None:
    assert isinstance(extract(sdk, "MD_JSON"), Weather)
