"""/v1/multimodal/caption and /v1/multimodal/vqa (and their /upload twins) on tiny BLIP and LLaVA models.

The tiny models never generate special tokens and have whole-word vocabularies, so the number of words
of an answer is the number of tokens generated (tests/fixtures/multimodal.py).
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.fixtures.multimodal import BLIP_MAX_POSITIONS, LLAVA_MAX_POSITIONS
from tests.fixtures.vision import image_b64

IMAGE = image_b64((30, 160, 60))
CAPTIONERS = ["tiny_blip_caption", "tiny_llava"]


@pytest.fixture
def mclient(client_factory: Any) -> TestClient:
    return client_factory()


@pytest.fixture
def spy_generate(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Records the keyword arguments of every generate() call of the BLIP and LLaVA classes."""
    import transformers

    calls: list[dict[str, Any]] = []
    for name in ("BlipForConditionalGeneration", "BlipForQuestionAnswering", "LlavaForConditionalGeneration"):
        cls = getattr(transformers, name)
        original = cls.generate

        def generate(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            calls.append(kwargs)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "generate", generate)
    return calls


def ok(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()


def error(response: Any, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return response.json()["error"]


def token_ids(folder: Path, text: str) -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder)).encode(text, add_special_tokens=False)


def contains(sequence: list[int], part: list[int]) -> bool:
    return any(sequence[i:i + len(part)] == part for i in range(len(sequence) - len(part) + 1))


# ----- caption ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fixture", CAPTIONERS)
def test_caption_shape_and_determinism(mclient: TestClient, request: Any, fixture: str) -> None:
    folder = str(request.getfixturevalue(fixture))
    first = ok(mclient.post("/v1/multimodal/caption", json={"model": folder, "image": IMAGE}))
    assert set(first) == {"caption", "model"} and first["model"] == folder
    assert isinstance(first["caption"], str) and first["caption"]
    assert ok(mclient.post("/v1/multimodal/caption", json={"model": folder, "image": IMAGE})) == first


@pytest.mark.parametrize("fixture", CAPTIONERS)
def test_caption_max_length_counts_generated_tokens(mclient: TestClient, request: Any, fixture: str) -> None:
    folder = str(request.getfixturevalue(fixture))
    for n in (1, 3, 8):
        response = mclient.post("/v1/multimodal/caption", json={"model": folder, "image": IMAGE, "max_length": n})
        assert len(ok(response)["caption"].split()) == n
        assert "X-Ignored-Params" not in response.headers


@pytest.mark.parametrize("fixture, limit", [("tiny_blip_caption", BLIP_MAX_POSITIONS),
                                            ("tiny_llava", LLAVA_MAX_POSITIONS)])
def test_caption_max_length_above_model_maximum_is_clamped_and_reported(
        mclient: TestClient, request: Any, fixture: str, limit: int) -> None:
    folder = str(request.getfixturevalue(fixture))
    response = mclient.post("/v1/multimodal/caption", json={"model": folder, "image": IMAGE, "max_length": 100000})
    words = len(ok(response)["caption"].split())
    assert response.headers["X-Ignored-Params"] == "max_length"
    assert 0 < words < limit  # clamped to the room the prompt leaves in the model's positions


def test_blip_caption_prompt_starts_the_caption(mclient: TestClient, tiny_blip_caption: Path) -> None:
    body = ok(mclient.post("/v1/multimodal/caption", json={"model": str(tiny_blip_caption), "image": IMAGE,
                                                          "prompt": "a picture of", "max_length": 4}))
    assert body["caption"].startswith("a picture of ") and len(body["caption"].split()) == 3 + 4


def test_vlm_caption_prompt_reaches_the_model(mclient: TestClient, tiny_llava: Path,
                                              spy_generate: list[dict[str, Any]]) -> None:
    ok(mclient.post("/v1/multimodal/caption", json={"model": str(tiny_llava), "image": IMAGE,
                                                   "prompt": "what is on the road"}))
    ids = spy_generate[-1]["input_ids"][0].tolist()
    assert contains(ids, token_ids(tiny_llava, "what is on the road"))
    assert spy_generate[-1]["pixel_values"].shape[0] == 1


# ----- vqa ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fixture", ["tiny_blip_vqa", "tiny_blip_caption", "tiny_llava"])
def test_vqa_answers_conditioned_on_the_question(mclient: TestClient, request: Any, fixture: str,
                                                 spy_generate: list[dict[str, Any]]) -> None:
    folder = request.getfixturevalue(fixture)
    question = "how many cat there"
    body = ok(mclient.post("/v1/multimodal/vqa", json={"model": str(folder), "image": IMAGE, "question": question,
                                                      "max_length": 5}))
    assert set(body) == {"answer", "model"} and body["model"] == str(folder)
    assert len(body["answer"].split()) == 5  # only the answer, never the question or the prompt
    assert contains(spy_generate[-1]["input_ids"][0].tolist(), token_ids(folder, question))


def test_captioning_model_answers_depend_on_the_question(mclient: TestClient, tiny_blip_caption: Path) -> None:
    answers = {ok(mclient.post("/v1/multimodal/vqa", json={"model": str(tiny_blip_caption), "image": IMAGE,
                                                          "question": q}))["answer"]
               for q in ("what color is the car", "how many dog", "is there a tree")}
    assert len(answers) > 1


def test_vqa_default_max_length_and_clamp(mclient: TestClient, tiny_blip_vqa: Path) -> None:
    plain = mclient.post("/v1/multimodal/vqa", json={"model": str(tiny_blip_vqa), "image": IMAGE, "question": "what"})
    assert len(ok(plain)["answer"].split()) == BLIP_MAX_POSITIONS - 1  # default 100 > the model's 39 tokens of room
    assert plain.headers["X-Ignored-Params"] == "max_length"


def test_question_too_long_is_400(mclient: TestClient, tiny_blip_vqa: Path, tiny_blip_caption: Path) -> None:
    long_question = " ".join(["cat"] * (BLIP_MAX_POSITIONS + 5))
    for folder in (tiny_blip_vqa, tiny_blip_caption):
        err = error(mclient.post("/v1/multimodal/vqa", json={"model": str(folder), "image": IMAGE,
                                                            "question": long_question}))
        assert err["param"] == "question" and "too long" in err["message"]


# ----- uploads ------------------------------------------------------------------------------------------
def test_caption_upload_matches_json(mclient: TestClient, tiny_blip_caption: Path) -> None:
    json_body = ok(mclient.post("/v1/multimodal/caption", json={"model": str(tiny_blip_caption), "image": IMAGE,
                                                               "max_length": 6, "prompt": "a photo of"}))
    up = ok(mclient.post("/v1/multimodal/caption/upload",
                         data={"model": str(tiny_blip_caption), "max_length": "6", "prompt": "a photo of"},
                         files={"file": ("x.png", base64.b64decode(IMAGE), "image/png")}))
    assert up == json_body


def test_vqa_upload_matches_json(mclient: TestClient, tiny_blip_vqa: Path) -> None:
    json_body = ok(mclient.post("/v1/multimodal/vqa", json={"model": str(tiny_blip_vqa), "image": IMAGE,
                                                           "question": "what color", "max_length": 3}))
    up = ok(mclient.post("/v1/multimodal/vqa/upload",
                         data={"model": str(tiny_blip_vqa), "question": "what color", "max_length": "3"},
                         files={"file": ("x.png", base64.b64decode(IMAGE), "image/png")}))
    assert up == json_body


def test_upload_errors(mclient: TestClient, tiny_blip_vqa: Path) -> None:
    png = base64.b64decode(IMAGE)
    err = error(mclient.post("/v1/multimodal/vqa/upload", data={"model": str(tiny_blip_vqa)},
                             files={"file": ("x.png", png, "image/png")}))
    assert err["param"] == "question"
    err = error(mclient.post("/v1/multimodal/vqa/upload", data={"model": str(tiny_blip_vqa), "question": "what"}))
    assert err["param"] == "file"
    err = error(mclient.post("/v1/multimodal/caption/upload", data={"model": str(tiny_blip_vqa)},
                             files=[("file", ("a.png", png, "image/png")), ("file", ("b.png", png, "image/png"))]))
    assert err["param"] == "file.1"


# ----- errors -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("route, payload, param", [
    ("caption", {}, "image"),
    ("caption", {"image": "not base64!"}, "image"),
    ("caption", {"images": [IMAGE, IMAGE]}, "images.1"),
    ("caption", {"image": IMAGE, "max_length": 0}, "max_length"),
    ("caption", {"image": IMAGE, "max_length": "long"}, "max_length"),
    ("vqa", {"image": IMAGE}, "question"),
    ("vqa", {"image": IMAGE, "question": "   "}, "question"),
    ("vqa", {"image": IMAGE, "question": 3}, "question"),
])
def test_bad_input_is_400_naming_the_field(mclient: TestClient, tiny_blip_caption: Path, route: str,
                                           payload: dict[str, Any], param: str) -> None:
    err = error(mclient.post(f"/v1/multimodal/{route}", json={"model": str(tiny_blip_caption), **payload}))
    assert err["param"] == param and err["type"] == "invalid_request_error"


def test_single_item_images_list_is_accepted(mclient: TestClient, tiny_blip_caption: Path) -> None:
    a = ok(mclient.post("/v1/multimodal/caption", json={"model": str(tiny_blip_caption), "image": IMAGE}))
    b = ok(mclient.post("/v1/multimodal/caption", json={"model": str(tiny_blip_caption), "images": [IMAGE]}))
    assert a == b


def test_kind_from_config_not_name(mclient: TestClient, tiny_blip_vqa: Path, tmp_path: Path) -> None:
    misleading = tmp_path / "blip-image-captioning-base"
    shutil.copytree(tiny_blip_vqa, misleading)
    err = error(mclient.post("/v1/multimodal/caption", json={"model": str(misleading), "image": IMAGE}))
    assert err["code"] == "unsupported_model_type" and err["param"] == "model"
    ok(mclient.post("/v1/multimodal/vqa", json={"model": str(misleading), "image": IMAGE, "question": "what"}))


def test_non_multimodal_model_is_unsupported(mclient: TestClient, tmp_path: Path) -> None:
    folder = tmp_path / "vit"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "vit",
                                                    "architectures": ["ViTForImageClassification"]}))
    err = error(mclient.post("/v1/multimodal/caption", json={"model": str(folder), "image": IMAGE}))
    assert err["code"] == "unsupported_model_type" and "vit" in err["message"]


def test_default_model_is_404_offline(mclient: TestClient) -> None:
    err = error(mclient.post("/v1/multimodal/caption", json={"image": IMAGE}), 404)
    assert err["code"] == "model_not_found" and "blip" in err["message"]
