"""/v1/vision/classify and /v1/vision/clip (and their /upload twins) on tiny real models over HTTP."""

from __future__ import annotations

import base64
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.fixtures.vision import VIT_LABELS, image_b64

RED, BLUE = image_b64((220, 20, 20)), image_b64((20, 20, 220), size=(64, 48))


@pytest.fixture
def vclient(client_factory: Any) -> TestClient:
    return client_factory()


def ok(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()


def error(response: Any, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["detail"] == body["error"]["message"]
    return body["error"]


def scores(prediction_list: list[dict[str, Any]]) -> dict[str, float]:
    return {p["label"]: p["score"] for p in prediction_list}


# ----- classify -----------------------------------------------------------------------------------------
def test_classify_shape_order_and_labels(vclient: TestClient, tiny_vit: Path) -> None:
    body = ok(vclient.post("/v1/vision/classify", json={"model": str(tiny_vit), "images": [RED, BLUE]}))
    assert body["object"] == "list" and body["model"] == str(tiny_vit)
    assert [d["index"] for d in body["data"]] == [0, 1]
    for item in body["data"]:
        preds = item["predictions"]
        assert len(preds) == 5  # default top_k
        assert {p["label"] for p in preds} <= set(VIT_LABELS)
        values = [p["score"] for p in preds]
        assert values == sorted(values, reverse=True) and all(0 <= v <= 1 for v in values)
    assert body["data"][0]["predictions"] != body["data"][1]["predictions"]


def test_classify_all_labels_sum_to_one(vclient: TestClient, tiny_vit: Path) -> None:
    body = ok(vclient.post("/v1/vision/classify", json={"model": str(tiny_vit), "images": [RED], "top_k": 50}))
    preds = body["data"][0]["predictions"]
    assert sorted(p["label"] for p in preds) == sorted(VIT_LABELS)
    assert math.isclose(sum(p["score"] for p in preds), 1.0, abs_tol=1e-5)
    top1 = ok(vclient.post("/v1/vision/classify", json={"model": str(tiny_vit), "images": [RED], "top_k": 1}))
    assert top1["data"][0]["predictions"] == preds[:1]


def test_classify_single_image_alias_and_string_images(vclient: TestClient, tiny_vit: Path) -> None:
    many = ok(vclient.post("/v1/vision/classify", json={"model": str(tiny_vit), "images": [RED]}))
    one = ok(vclient.post("/v1/vision/classify", json={"model": str(tiny_vit), "image": RED}))
    text = ok(vclient.post("/v1/vision/classify", json={"model": str(tiny_vit), "images": RED}))
    assert one["data"] == many["data"] == text["data"]


def test_classify_data_url_and_unknown_fields(vclient: TestClient, tiny_vit: Path) -> None:
    plain = ok(vclient.post("/v1/vision/classify", json={"model": str(tiny_vit), "image": RED}))
    url = ok(vclient.post("/v1/vision/classify", json={"model": str(tiny_vit), "image": "data:image/png;base64," + RED,
                                                      "huggingface_token": "x", "whatever": {"a": 1}}))
    assert url["data"] == plain["data"]


def test_classify_upload_matches_json(vclient: TestClient, tiny_vit: Path) -> None:
    json_body = ok(vclient.post("/v1/vision/classify", json={"model": str(tiny_vit), "image": BLUE, "top_k": 3}))
    up = ok(vclient.post("/v1/vision/classify/upload", data={"model": str(tiny_vit), "top_k": "3"},
                         files={"file": ("blue.png", base64.b64decode(BLUE), "image/png")}))
    assert up["model"] == str(tiny_vit)
    assert up["data"] == json_body["data"]


def test_classify_upload_several_files(vclient: TestClient, tiny_vit: Path) -> None:
    files = [("file", ("a.png", base64.b64decode(RED), "image/png")),
             ("file", ("b.png", base64.b64decode(BLUE), "image/png"))]
    up = ok(vclient.post("/v1/vision/classify/upload", data={"model": str(tiny_vit)}, files=files))
    assert [d["index"] for d in up["data"]] == [0, 1]


# ----- clip ---------------------------------------------------------------------------------------------
LABELS = ["cat", "dog", "bird", "car"]


@pytest.mark.parametrize("fixture", ["tiny_clip", "tiny_siglip"])
def test_clip_one_prediction_per_label_summing_to_one(vclient: TestClient, request: Any, fixture: str) -> None:
    folder = request.getfixturevalue(fixture)
    body = ok(vclient.post("/v1/vision/clip", json={"model": str(folder), "images": [RED, BLUE],
                                                   "candidate_labels": LABELS}))
    assert body["object"] == "list" and body["model"] == str(folder) and len(body["data"]) == 2
    for item in body["data"]:
        preds = item["predictions"]
        assert sorted(p["label"] for p in preds) == sorted(LABELS)
        values = [p["score"] for p in preds]
        assert values == sorted(values, reverse=True)
        assert math.isclose(sum(values), 1.0, abs_tol=1e-5)


def test_clip_aliases_give_the_same_answer(vclient: TestClient, tiny_clip: Path) -> None:
    a = ok(vclient.post("/v1/vision/clip", json={"model": str(tiny_clip), "images": [RED],
                                                "candidate_labels": LABELS}))
    b = ok(vclient.post("/v1/vision/clip", json={"model": str(tiny_clip), "image": RED, "labels": LABELS}))
    c = ok(vclient.post("/v1/vision/clip", json={"model": str(tiny_clip), "image": RED,
                                                "labels": " cat, dog ,bird,car "}))
    assert a["data"] == b["data"] == c["data"]


def test_clip_hypothesis_template_is_used(vclient: TestClient, tiny_clip: Path) -> None:
    base = {"model": str(tiny_clip), "image": RED, "labels": LABELS}
    default = ok(vclient.post("/v1/vision/clip", json=base))
    explicit = ok(vclient.post("/v1/vision/clip", json={**base, "hypothesis_template": "a photo of a {}."}))
    other = ok(vclient.post("/v1/vision/clip", json={**base, "hypothesis_template": "{} on a sunny beach"}))
    assert default["data"] == explicit["data"]
    assert scores(other["data"][0]["predictions"]) != scores(default["data"][0]["predictions"])
    err = error(vclient.post("/v1/vision/clip", json={**base, "hypothesis_template": "no placeholder"}))
    assert err["param"] == "hypothesis_template"


def test_clip_upload_trims_comma_separated_labels(vclient: TestClient, tiny_clip: Path) -> None:
    json_body = ok(vclient.post("/v1/vision/clip", json={"model": str(tiny_clip), "image": BLUE,
                                                        "candidate_labels": LABELS}))
    up = ok(vclient.post("/v1/vision/clip/upload", data={"model": str(tiny_clip), "labels": "cat ,  dog,bird , car"},
                         files={"file": ("x.png", base64.b64decode(BLUE), "image/png")}))
    assert up["data"] == json_body["data"]
    top2 = ok(vclient.post("/v1/vision/clip/upload", data={"model": str(tiny_clip), "labels": "cat,dog,bird,car",
                                                          "top_k": "2"},
                           files={"file": ("x.png", base64.b64decode(BLUE), "image/png")}))
    assert top2["data"][0]["predictions"] == json_body["data"][0]["predictions"][:2]


def test_clip_detected_from_config_not_name(vclient: TestClient, tiny_clip: Path, tiny_vit: Path,
                                            tmp_path: Path) -> None:
    misleading = tmp_path / "google-vit-base-patch16-224-classifier"
    shutil.copytree(tiny_clip, misleading)
    ok(vclient.post("/v1/vision/clip", json={"model": str(misleading), "image": RED, "labels": LABELS}))
    named_clip = tmp_path / "openai-clip-vit-base-patch32"
    shutil.copytree(tiny_vit, named_clip)
    ok(vclient.post("/v1/vision/classify", json={"model": str(named_clip), "image": RED}))
    err = error(vclient.post("/v1/vision/clip", json={"model": str(named_clip), "image": RED, "labels": LABELS}))
    assert err["code"] == "unsupported_model_type"


# ----- errors -------------------------------------------------------------------------------------------
def test_wrong_kind_of_model_is_unsupported(vclient: TestClient, tiny_clip: Path, tiny_vit: Path,
                                            tmp_path: Path) -> None:
    err = error(vclient.post("/v1/vision/classify", json={"model": str(tiny_clip), "image": RED}))
    assert err["code"] == "unsupported_model_type" and err["param"] == "model"
    err = error(vclient.post("/v1/vision/clip", json={"model": str(tiny_vit), "image": RED, "labels": LABELS}))
    assert err["code"] == "unsupported_model_type"
    text_model = tmp_path / "bert"
    text_model.mkdir()
    (text_model / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    err = error(vclient.post("/v1/vision/classify", json={"model": str(text_model), "image": RED}))
    assert err["code"] == "unsupported_model_type" and "bert" in err["message"]


@pytest.mark.parametrize("payload, param", [
    ({}, "images"),
    ({"images": []}, "images"),
    ({"images": [RED, "not an image!"]}, "images.1"),
    ({"image": base64.b64encode(b"not an image at all").decode()}, "image"),
    ({"images": [RED], "image": RED}, "image"),
    ({"images": [RED], "top_k": 0}, "top_k"),
    ({"images": [RED], "top_k": "many"}, "top_k"),
    ({"images": [1, 2]}, "images.0"),
])
def test_classify_bad_input_is_400_naming_the_field(vclient: TestClient, tiny_vit: Path, payload: dict[str, Any],
                                                    param: str) -> None:
    err = error(vclient.post("/v1/vision/classify", json={"model": str(tiny_vit), **payload}))
    assert err["param"] == param and err["type"] == "invalid_request_error"


@pytest.mark.parametrize("payload, param", [
    ({"image": RED}, "candidate_labels"),
    ({"image": RED, "labels": []}, "labels"),
    ({"image": RED, "labels": ["cat", "  "]}, "labels.1"),
    ({"image": RED, "labels": "cat,,dog"}, "labels"),
    ({"image": RED, "labels": ["cat"], "candidate_labels": ["dog"]}, "labels"),
])
def test_clip_bad_labels_are_400(vclient: TestClient, tiny_clip: Path, payload: dict[str, Any], param: str) -> None:
    err = error(vclient.post("/v1/vision/clip", json={"model": str(tiny_clip), **payload}))
    assert err["param"] == param


def test_upload_errors(vclient: TestClient, tiny_vit: Path) -> None:
    err = error(vclient.post("/v1/vision/classify/upload", data={"model": str(tiny_vit)}))
    assert err["param"] == "file"
    err = error(vclient.post("/v1/vision/classify/upload", data={"model": str(tiny_vit)},
                             files={"file": ("x.png", b"garbage", "image/png")}))
    assert err["param"] == "file"
    err = error(vclient.post("/v1/vision/classify/upload", data={"model": str(tiny_vit), "top_k": "zero"},
                             files={"file": ("x.png", base64.b64decode(RED), "image/png")}))
    assert err["param"] == "top_k"
    err = error(vclient.post("/v1/vision/classify/upload", json={"model": str(tiny_vit), "image": RED}))
    assert "multipart" in err["message"]


def test_default_models_are_404_offline(vclient: TestClient) -> None:
    err = error(vclient.post("/v1/vision/classify", json={"image": RED}), 404)
    assert err["code"] == "model_not_found" and "vit" in err["message"]
    err = error(vclient.post("/v1/vision/clip", json={"image": RED, "labels": LABELS}), 404)
    assert "clip" in err["message"]
