"""Vision-language chat: image_url parts in /v1/chat/completions reach an image-text-to-text model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.fixtures.vision import image_b64

IMAGE = image_b64((200, 40, 40))


def image_message(text: str = "caption this", url: str | None = None) -> list[dict]:
    return [{"role": "user", "content": [
        {"type": "text", "text": text},
        {"type": "image_url", "image_url": {"url": url or f"data:image/png;base64,{IMAGE}"}}]}]


@pytest.fixture(scope="module")
def vlm_client(tmp_path_factory: pytest.TempPathFactory):
    from server import create_app
    from tests.conftest import make_settings

    app = create_app(make_settings(tmp_path_factory.mktemp("vlm-app")))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_chat_with_an_image_answers_and_counts_image_tokens(vlm_client: TestClient, tiny_llava: Path) -> None:
    body = {"model": str(tiny_llava), "messages": image_message(), "max_tokens": 4}
    r = vlm_client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    choice = data["choices"][0]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    assert 0 <= data["usage"]["completion_tokens"] <= 4  # random weights may end at once
    text_only = vlm_client.post("/v1/chat/completions", json={
        "model": str(tiny_llava), "messages": [{"role": "user", "content": "caption this"}], "max_tokens": 4})
    assert text_only.status_code == 200, text_only.text
    # the image expands into image tokens in the prompt
    assert data["usage"]["prompt_tokens"] > text_only.json()["usage"]["prompt_tokens"]
    info = vlm_client.get("/v1/models/" + str(tiny_llava)).json()
    assert info["sub_kind"] == "image-text-to-text"


def test_greedy_image_chat_is_deterministic(vlm_client: TestClient,
                                                                     tiny_llava: Path) -> None:
    def ask(url: str | None = None) -> str:
        r = vlm_client.post("/v1/chat/completions", json={
            "model": str(tiny_llava), "messages": image_message(url=url), "max_tokens": 6, "temperature": 0})
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]

    assert ask() == ask()


def test_image_chat_streams(vlm_client: TestClient, tiny_llava: Path) -> None:
    body = {"model": str(tiny_llava), "messages": image_message(), "max_tokens": 4, "stream": True,
            "stream_options": {"include_usage": True}}
    with vlm_client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    frames = [json.loads(x) for x in lines[:-1]]
    assert frames[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert frames[-1]["choices"] == [] and frames[-1]["usage"]["prompt_tokens"] > 0
    assert any(f["choices"] and f["choices"][0]["finish_reason"] for f in frames)


def test_bad_image_is_a_400_naming_the_part(vlm_client: TestClient, tiny_llava: Path) -> None:
    r = vlm_client.post("/v1/chat/completions", json={
        "model": str(tiny_llava), "messages": image_message(url="data:image/png;base64,bm90IGFuIGltYWdl")})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "messages.0.content.1.image_url.url"


def test_text_only_model_given_an_image_is_a_400(vlm_client: TestClient, tiny_lm) -> None:
    r = vlm_client.post("/v1/chat/completions", json={"model": str(tiny_lm.path), "messages": image_message()})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "messages.0.content.1"


def test_the_responses_api_reads_input_image_parts(vlm_client: TestClient, tiny_llava: Path) -> None:
    content = [{"type": "input_text", "text": "caption this"},
               {"type": "input_image", "image_url": f"data:image/png;base64,{IMAGE}"}]
    r = vlm_client.post("/v1/responses", json={"model": str(tiny_llava), "max_output_tokens": 4,
                                               "input": [{"role": "user", "content": content}]})
    assert r.status_code == 200, r.text
    text_only = vlm_client.post("/v1/responses", json={"model": str(tiny_llava), "max_output_tokens": 4,
                                                       "input": "caption this"})
    assert r.json()["usage"]["input_tokens"] > text_only.json()["usage"]["input_tokens"]  # image tokens
