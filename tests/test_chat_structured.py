"""response_format: json_schema and json_object constrain decoding, even on a random-weight model."""

from __future__ import annotations

import json
from typing import Any

import jsonschema_rs
from fastapi.testclient import TestClient

from tests.fixtures.language import HELLO_PROMPT, TinyLM

BOTH_ENGINES = True  # every test using the tiny chat models runs on transformers and on llama.cpp

HELLO = [{"role": "user", "content": HELLO_PROMPT}]
PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 8},
    "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3}},
    "required": ["name", "age", "tags"], "additionalProperties": False}


def chat(client: TestClient, model: Any, **fields: Any) -> Any:
    return client.post("/v1/chat/completions", json={"model": str(model), "messages": HELLO, **fields})


def test_json_schema_output_validates_from_a_random_model(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    data = chat(lm_client, tiny_lm.random_path, response_format=fmt, n=4, seed=11, temperature=1.0,
                max_tokens=120).json()
    validator = jsonschema_rs.validator_for(PERSON)
    for choice in data["choices"]:
        assert choice["finish_reason"] == "stop", choice
        validator.validate(json.loads(choice["message"]["content"]))


def test_json_schema_while_streaming(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    body = {"model": str(tiny_lm.random_path), "messages": HELLO, "response_format": fmt, "stream": True,
            "temperature": 0, "max_tokens": 120}
    with lm_client.stream("POST", "/v1/chat/completions", json=body) as r:
        frames = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    text = "".join(f["choices"][0]["delta"].get("content") or "" for f in frames)
    jsonschema_rs.validator_for(PERSON).validate(json.loads(text))


def test_json_object_parses_on_the_trained_model(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    data = chat(lm_client, tiny_lm.path, response_format={"type": "json_object"}, temperature=0,
                max_tokens=200).json()
    choice = data["choices"][0]
    if choice["finish_reason"] == "stop":
        assert isinstance(json.loads(choice["message"]["content"]), dict)
    else:  # cut by max_tokens: the text is the start of an object
        assert choice["finish_reason"] == "length" and choice["message"]["content"].startswith("{")


def test_length_cut_json_reports_length(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    choice = chat(lm_client, tiny_lm.random_path, response_format=fmt, max_tokens=3).json()["choices"][0]
    assert choice["finish_reason"] == "length" and choice["message"]["content"].startswith("{")


def test_text_format_is_unconstrained(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    r = chat(lm_client, tiny_lm.path, response_format={"type": "text"}, temperature=0)
    assert not r.json()["choices"][0]["message"]["content"].startswith("{")


def test_bad_response_format_is_400(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    r = chat(lm_client, tiny_lm.path, response_format={"type": "xml"})
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("response_format")
    r = chat(lm_client, tiny_lm.path, response_format={"type": "json_schema"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format.json_schema"
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}
    r = chat(lm_client, tiny_lm.path, response_format=bad)
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format.json_schema.schema"
