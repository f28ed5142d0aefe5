"""Every model-taking endpoint given a model folder of another category answers 400 `unsupported_model_type`
(param `model`) in the API.md envelope, never a 500: the one category check of core/registry.py, made by the
manager before anything loads, and each loader's own check of its category's sub-kinds."""

from __future__ import annotations

import base64
from typing import Any

import pytest

import server
from core.settings import Settings
from tests.fixtures.audio import make_audio
from tests.fixtures.vision import image_b64
from tests.hardening import assert_envelope, iter_routes

# One tiny model of each category (fixture names).
MODELS = {"causal": "tiny_lm", "encoder": "tiny_st_folder", "diffusion": "tiny_sd", "vision": "tiny_clip",
          "audio": "tiny_whisper_path", "multimodal": "tiny_blip_caption", "speech": "tiny_vits_path"}
IMAGE = image_b64()
AUDIO = base64.b64encode(make_audio(seconds=0.5)).decode()
# route -> (category it serves, the rest of a valid request); /upload twins are sent as multipart forms
ROUTES: dict[str, tuple[str, dict[str, Any]]] = {
    "/v1/chat/completions": ("causal", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
    "/v1/completions": ("causal", {"prompt": "hi", "max_tokens": 1}),
    "/v1/embeddings": ("encoder", {"input": "hi"}),
    "/v1/classify": ("encoder", {"input": "hi"}),
    "/v1/rerank": ("encoder", {"query": "hi", "documents": ["a"]}),
    "/v1/responses": ("causal", {"input": "hi", "max_output_tokens": 2}),
    "/v1/images/generations": ("diffusion", {"prompt": "a cat", "size": "64x64", "num_inference_steps": 1}),
    "/v1/images/edits": ("diffusion", {"prompt": "a cat", "image": IMAGE, "mask": IMAGE, "num_inference_steps": 1}),
    "/v1/images/variations": ("diffusion", {"image": IMAGE, "num_inference_steps": 1}),
    "/v1/vision/classify": ("vision", {"image": IMAGE}),
    "/v1/vision/classify/upload": ("vision", {}),
    "/v1/vision/clip": ("vision", {"image": IMAGE, "labels": ["cat", "dog"]}),
    "/v1/vision/clip/upload": ("vision", {"labels": "cat, dog"}),
    "/v1/audio/transcriptions": ("audio", {"file": AUDIO}),
    "/v1/audio/translations": ("audio", {"file": AUDIO}),
    "/v1/audio/speech": ("speech", {"input": "hi"}),
    "/v1/multimodal/caption": ("multimodal", {"image": IMAGE, "max_length": 4}),
    "/v1/multimodal/caption/upload": ("multimodal", {"max_length": "4"}),
    "/v1/multimodal/vqa": ("multimodal", {"image": IMAGE, "question": "what?", "max_length": 4}),
    "/v1/multimodal/vqa/upload": ("multimodal", {"question": "what?", "max_length": "4"}),
}
# (route category, model category) pairs that are served by design: a causal LM embeds (last-token pooling).
SERVED = {("encoder", "causal")}


def test_the_table_covers_every_route_that_takes_a_model() -> None:
    posts = {path for method, path in iter_routes(server.create_app(Settings())) if method == "POST"}
    assert posts - set(ROUTES) == {"/v1/models/load", "/v1/models/unload"}


def model_path(request: pytest.FixtureRequest, fixture: str) -> str:
    value = request.getfixturevalue(fixture)
    return str(getattr(value, "path", value))  # tiny_lm is a TinyLM holding its folder


def post(client: Any, route: str, model: str, fields: dict[str, Any]) -> Any:
    if route.endswith("/upload"):
        files = {"file": ("a.png", base64.b64decode(IMAGE), "image/png")}
        return client.post(route, data={"model": model, **fields}, files=files)
    return client.post(route, json={"model": model, **fields})


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_a_model_of_another_category_is_400_unsupported_model_type(client: Any, request: pytest.FixtureRequest,
                                                                     route: str) -> None:
    category, fields = ROUTES[route]
    for other, fixture in MODELS.items():
        if other == category or ((category, other) in SERVED and route == "/v1/embeddings"):
            continue
        model = model_path(request, fixture)
        body = assert_envelope(post(client, route, model, fields), 400, "unsupported_model_type", "model")
        assert body["error"]["type"] == "invalid_request_error", (route, other, body)


@pytest.mark.parametrize("category", sorted(MODELS))
def test_loading_a_model_as_another_category_is_400(client: Any, request: pytest.FixtureRequest,
                                                    category: str) -> None:
    for other, fixture in MODELS.items():
        if other == category or (category, other) in SERVED:
            continue
        model = model_path(request, fixture)
        r = client.post("/v1/models/load", json={"model": model, "type": category})
        assert_envelope(r, 400, "unsupported_model_type", "model")
