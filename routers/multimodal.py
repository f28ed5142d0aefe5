"""Multimodal routes: image captioning and visual question answering, JSON and multipart.

`max_length` counts generated tokens; above what the model can hold it is lowered to fit and named in the
`X-Ignored-Params` header (API.md "Multimodal").
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import Field

from core.errors import InvalidRequest
from core.media import load_image
from routers.common import OpenAIRequest, manager_of, report_ignored, request_token, settings_of
from routers.upload import Media, add_json_and_upload

router = APIRouter()


# ----- wire types ---------------------------------------------------------------------------------------
class OneImageRequest(OpenAIRequest):
    """One image as `image` (or a one-item `images`, as the vision routes take)."""

    model: str | None = None
    image: str | None = None
    images: list[str] | str | None = None

    def media(self) -> Media:
        if self.image is not None:
            return [(self.image, "image")]
        if isinstance(self.images, str):
            return [(self.images, "images")]
        if self.images:
            return [(v, f"images.{i}") for i, v in enumerate(self.images)]
        return []


class CaptionRequest(OneImageRequest):
    max_length: int = Field(50, ge=1)
    prompt: str | None = None


class VqaRequest(OneImageRequest):
    question: str = Field(min_length=1)
    max_length: int = Field(100, ge=1)


# ----- handlers -----------------------------------------------------------------------------------------
async def _image(request: Request, media: Media, upload: bool) -> Any:
    field = "file" if upload else "image"
    if not media:
        raise InvalidRequest(f"Missing required field '{field}' (the image).", param=field)
    if len(media) > 1:
        raise InvalidRequest(f"These routes take exactly one image; got {len(media)}.", param=media[1][1])
    value, name = media[0]
    return await asyncio.to_thread(load_image, value, name, settings_of(request))


async def _caption(request: Request, response: Response, body: CaptionRequest, media: Media,
                   upload: bool) -> dict[str, Any]:
    image = await _image(request, media, upload)
    prompt = body.prompt if body.prompt and body.prompt.strip() else None
    async with manager_of(request).acquire(body.model, "multimodal", "caption",
                                           token=request_token(request, body)) as model:
        result = await model.run(model.caption, image, prompt, body.max_length)
        if result.clamped:
            report_ignored(response, ["max_length"])
        return {"caption": result.text, "model": body.model or model.model_id}


async def _vqa(request: Request, response: Response, body: VqaRequest, media: Media,
               upload: bool) -> dict[str, Any]:
    if not body.question.strip():
        raise InvalidRequest("'question' is empty.", param="question")
    image = await _image(request, media, upload)
    async with manager_of(request).acquire(body.model, "multimodal", "vqa",
                                           token=request_token(request, body)) as model:
        result = await model.run(model.answer, image, body.question.strip(), body.max_length)
        if result.clamped:
            report_ignored(response, ["max_length"])
        return {"answer": result.text, "model": body.model or model.model_id}


add_json_and_upload(router, "/v1/multimodal/caption", CaptionRequest, _caption,
                    "Caption an image; an optional `prompt` starts (conditions) the caption.",
                    "`file`, `model`, `max_length`, `prompt`")
add_json_and_upload(router, "/v1/multimodal/vqa", VqaRequest, _vqa, "Answer a question about an image.",
                    "`file`, `model`, `question`, `max_length`")
