"""Vision routes: image classification and CLIP-style zero-shot classification, JSON and multipart.

Concurrent requests to one model share its micro-batcher (core/batching.py): each image is one batch item,
so a request's scores are the same alone or batched with others.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import Field, field_validator

from core.batching import batcher_for
from core.errors import InvalidRequest
from core.media import load_image
from core.settings import Settings
from routers.common import OpenAIRequest, manager_of, request_token, settings_of
from routers.upload import Media, add_json_and_upload

router = APIRouter()

DEFAULT_TEMPLATE = "a photo of a {}."


# ----- wire types ---------------------------------------------------------------------------------------
class ImagesRequest(OpenAIRequest):
    """Images as `images` (a list, or one string) or a single `image` (API.md: both spellings)."""

    model: str | None = None
    images: list[str] | str | None = None
    image: list[str] | str | None = None

    def media(self) -> Media:
        """[(media string, field name for errors)]; a 400 when no image is given."""
        if self.images is not None and self.image is not None:
            raise InvalidRequest("Send the images as 'images' or as 'image', not both.", param="image")
        name = "images" if self.images is not None else "image"
        value = self.images if self.images is not None else self.image
        if value is None:
            raise InvalidRequest("Missing required field 'images' (or 'image').", param="images")
        if isinstance(value, str):
            return [(value, name)]
        if not value:
            raise InvalidRequest(f"'{name}' must hold at least one image.", param=name)
        return [(v, f"{name}.{i}") for i, v in enumerate(value)]


class ClassifyRequest(ImagesRequest):
    top_k: int | None = Field(5, ge=1)


class ClipRequest(ImagesRequest):
    candidate_labels: list[str] | str | None = None
    labels: list[str] | str | None = None
    hypothesis_template: str | None = None
    top_k: int | None = Field(None, ge=1)

    @field_validator("hypothesis_template")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        if v is not None and "{}" not in v:
            raise ValueError("must contain '{}' where the label goes, e.g. 'a photo of a {}.'")
        return v

    def label_list(self) -> tuple[str, list[str]]:
        """(field name, trimmed labels); a comma-separated string is split (the multipart form)."""
        if self.candidate_labels is not None and self.labels is not None:
            raise InvalidRequest("Send 'candidate_labels' or 'labels', not both.", param="labels")
        name = "candidate_labels" if self.candidate_labels is not None else "labels"
        value = self.candidate_labels if self.candidate_labels is not None else self.labels
        if value is None:
            raise InvalidRequest("Missing required field 'candidate_labels' (or 'labels').",
                                 param="candidate_labels")
        raw = value.split(",") if isinstance(value, str) else value
        labels = [label.strip() for label in raw]
        for i, label in enumerate(labels):
            if not label:
                raise InvalidRequest(f"Label {i} of '{name}' is empty.",
                                     param=name if isinstance(value, str) else f"{name}.{i}")
        if not labels:
            raise InvalidRequest(f"'{name}' must hold at least one label.", param=name)
        return name, labels


def _response(model: str, results: list[list[tuple[str, float]]], top_k: int | None) -> dict[str, Any]:
    return {"object": "list", "model": model,
            "data": [{"index": i, "predictions": [{"label": label, "score": score}
                                                  for label, score in ranked[:top_k]]}
                     for i, ranked in enumerate(results)]}


# ----- handlers -----------------------------------------------------------------------------------------
def _decode_all(media: Media, settings: Settings) -> list[Any]:
    if not media:
        raise InvalidRequest("Missing required field 'file' (the image to classify).", param="file")
    return [load_image(value, name, settings) for value, name in media]


async def _classify(request: Request, response: Response, body: ClassifyRequest, media: Media,
                    _upload: bool) -> dict[str, Any]:
    settings = settings_of(request)
    images = await asyncio.to_thread(_decode_all, media, settings)
    async with manager_of(request).acquire(body.model, "vision", "classify_image",
                                           token=request_token(request, body)) as model:
        batcher = batcher_for(model, model.classify_batch, settings, "classify_image")
        results = await batcher.submit(images)
        return _response(body.model or model.model_id, results, body.top_k)


async def _clip(request: Request, response: Response, body: ClipRequest, media: Media,
                _upload: bool) -> dict[str, Any]:
    settings = settings_of(request)
    _, labels = body.label_list()
    template = body.hypothesis_template or DEFAULT_TEMPLATE
    texts = tuple(template.replace("{}", label) for label in labels)
    images = await asyncio.to_thread(_decode_all, media, settings)
    async with manager_of(request).acquire(body.model, "vision", "clip", token=request_token(request, body)) as model:
        batcher = batcher_for(model, model.zero_shot_batch, settings, "clip")
        results = await batcher.submit([(image, tuple(labels), texts) for image in images])
        return _response(body.model or model.model_id, results, body.top_k)


add_json_and_upload(router, "/v1/vision/classify", ClassifyRequest, _classify,
                    "Image classification with the model's own labels; scores sorted descending.",
                    "`file`, `model`, `top_k`")
add_json_and_upload(router, "/v1/vision/clip", ClipRequest, _clip,
                    "Zero-shot classification over candidate labels; one prediction per label, scores sum to 1.",
                    "`file`, `model`, `labels` comma-separated, `top_k`")
