"""Concurrent vision requests share one micro-batch per model and get the same scores as alone."""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from core.batching import _BATCHERS
from core.contract import LoadContext
from core.resolve import ModelSpec
from models.vision.model import ImageClassifier, ZeroShotImageModel, detect_kind, load
from tests.fixtures.vision import image_b64

COLORS = [(220, 20, 20), (20, 220, 20), (20, 20, 220), (200, 200, 30), (90, 10, 160)]
LABEL_SETS = [("cat", "dog"), ("car", "bus", "train"), ("cat", "dog"), ("red", "blue", "green", "grey"), ("sky",)]


def _pil(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")


def _load(folder: Path) -> Any:
    return load(ModelSpec(requested=str(folder), key=str(folder), category="vision", path=folder), LoadContext())


def _close(a: list[tuple[str, float]], b: list[tuple[str, float]]) -> bool:
    same_labels = [x for x, _ in a] == [x for x, _ in b]
    return same_labels and all(abs(s - t) < 1e-5 for (_, s), (_, t) in zip(a, b, strict=True))


def test_kinds_detected_from_config(tiny_vit: Path, tiny_clip: Path, tiny_siglip: Path) -> None:
    assert isinstance(_load(tiny_vit), ImageClassifier)
    assert isinstance(_load(tiny_clip), ZeroShotImageModel)
    assert isinstance(_load(tiny_siglip), ZeroShotImageModel)
    assert detect_kind({"model_type": "blip", "architectures": ["BlipForConditionalGeneration"],
                        "text_config": {}, "vision_config": {}}) is None
    assert detect_kind({"model_type": "custom", "architectures": ["MyDualEncoderModel"],
                        "text_config": {}, "vision_config": {}}) == "clip"
    assert detect_kind({"model_type": "convnext", "architectures": ["ConvNextForImageClassification"]}) == "classifier"


def test_classifier_batch_invariance(tiny_vit: Path) -> None:
    model = _load(tiny_vit)
    images = [_pil(image_b64(c)) for c in COLORS]
    together = model.classify_batch(images)
    for image, batched in zip(images, together, strict=True):
        assert _close(model.classify_batch([image])[0], batched)


@pytest.mark.parametrize("fixture", ["tiny_clip", "tiny_siglip"])
def test_zero_shot_batch_invariance_with_mixed_label_sets(request: Any, fixture: str) -> None:
    model = _load(request.getfixturevalue(fixture))
    items = [(_pil(image_b64(c)), labels, tuple(f"a photo of a {x}." for x in labels))
             for c, labels in zip(COLORS, LABEL_SETS, strict=True)]
    together = model.zero_shot_batch(items)
    for item, batched in zip(items, together, strict=True):
        assert _close(model.zero_shot_batch([item])[0], batched)
        assert abs(sum(s for _, s in batched) - 1) < 1e-5 and len(batched) == len(item[1])
    assert together[-1] == [("sky", 1.0)]


def test_siglip_texts_padded_to_64_tokens(tiny_siglip: Path, tiny_clip: Path) -> None:
    assert _load(tiny_siglip)._text_inputs(["a cat"])["input_ids"].shape[1] == 64
    assert _load(tiny_clip)._text_inputs(["a cat"])["input_ids"].shape[1] < 64


async def _concurrent(app: Any, requests: list[tuple[str, dict[str, Any]]]) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60) as client:
        return await asyncio.gather(*(client.post(url, json=body) for url, body in requests))


@pytest.mark.parametrize("route", ["classify", "clip"])
def test_concurrent_requests_share_a_batch_and_match_alone(app_factory: Any, tiny_vit: Path, tiny_clip: Path,
                                                         route: str) -> None:
    folder = tiny_vit if route == "classify" else tiny_clip
    bodies = [{"model": str(folder), "image": image_b64(c), "top_k": 10} for c in COLORS]
    if route == "clip":
        bodies = [{**b, "labels": list(labels)} for b, labels in zip(bodies, LABEL_SETS, strict=True)]
    app = app_factory(batch_wait_ms=300)
    url = f"/v1/vision/{route}"
    alone = [r.json() for r in asyncio.run(_concurrent(app, [(url, bodies[0])]))]
    alone += [asyncio.run(_concurrent(app, [(url, b)]))[0].json() for b in bodies[1:]]
    together = asyncio.run(_concurrent(app, [(url, b) for b in bodies]))
    assert all(r.status_code == 200 for r in together), together[0].text
    model = app.state.manager.entries()[0].model
    batcher = _BATCHERS[model]["classify_image" if route == "classify" else "clip"]
    # the first request may find the model idle and run at once; the others arrive meanwhile and share a pass
    assert batcher.largest_batch >= len(bodies) - 1
    for one, many in zip(alone, together, strict=True):
        a, b = one["data"][0]["predictions"], many.json()["data"][0]["predictions"]
        assert [p["label"] for p in a] == [p["label"] for p in b]
        assert all(abs(p["score"] - q["score"]) < 1e-5 for p, q in zip(a, b, strict=True))
