"""Images routes: POST /v1/images/generations, /edits, /variations, and GET /v1/files/images/{name}.

Edits and variations take JSON (media strings) or multipart/form-data (as the OpenAI SDK sends them).
Inputs are decoded and checked before any model loads; the generation runs on the model's thread while
the handler polls for a client disconnect and, when it comes, stops the pipeline at the next step.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from pydantic import Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from core.errors import InvalidRequest
from core.images_store import ImageStore, encode
from core.media import has_alpha, load_image
from models.diffusion import GenerationCancelled, ImageJob, ImageResult, canonical_name, known_names
from routers.common import FastJSONResponse, OpenAIRequest, manager_of, report_ignored, request_token, settings_of
from routers.upload import parse_json_object

router = APIRouter()
logger = logging.getLogger("universal_runtime.images")

SIZE_MIN, SIZE_MAX = 64, 2048
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")
POLL_S = 0.2
_SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX×]\s*(\d{1,5})\s*$")
Body = TypeVar("Body", bound="ImageParams")


# ----- wire types --------------------------------------------------------------------------------
class ImageParams(OpenAIRequest):
    """Fields every images route takes."""

    model: str | None = None
    n: int | None = Field(1, ge=1, le=10, description="1-10 images; null means 1.")
    size: str | None = Field(None, description="'WIDTHxHEIGHT', multiples of 8, each side 64-2048.")
    response_format: Literal["url", "b64_json"] | None = None
    negative_prompt: str | None = None
    num_inference_steps: int | None = Field(None, ge=1, le=150)
    guidance_scale: float | None = Field(None, ge=0, le=30)
    seed: int | None = Field(None, ge=-1, le=2**64 - 1, description="Same seed, same image; -1 = random.")
    scheduler: str | None = Field(None, description="Sampler for this request only: " + ", ".join(known_names()))
    quality: Any = Field(None, description="Accepted and ignored.")
    style: Any = Field(None, description="Accepted and ignored.")


class GenerationRequest(ImageParams):
    prompt: str = Field(min_length=1)


class EditRequest(ImageParams):
    prompt: str = Field(min_length=1)
    image: str | bytes = Field(description="Image to edit (file upload, or base64 / data URL in JSON).")
    mask: str | bytes | None = Field(None, description="White (or transparent) = repaint; default: image alpha.")
    strength: float | None = Field(None, ge=0, le=1)


class VariationRequest(ImageParams):
    prompt: str | None = None
    image: str | bytes = Field(description="Source image (file upload, or base64 / data URL in JSON).")
    strength: float | None = Field(0.75, ge=0, le=1, description="0-1; null means 0.75.")


def _body_doc(model: type[OpenAIRequest]) -> dict[str, Any]:
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema},
                                                          "multipart/form-data": {"schema": schema}}}}


# ----- request decoding --------------------------------------------------------------------------
def parse_size(value: str | None) -> tuple[int, int] | None:
    """(width, height) from 'WxH', or None for no size / 'auto'. 400 naming `size` otherwise."""
    if value is None or value.strip().lower() in ("", "auto"):
        return None
    match = _SIZE.match(value)
    if not match:
        raise InvalidRequest(f"Invalid size '{value}': use 'WIDTHxHEIGHT', e.g. '512x512'.", param="size")
    width, height = int(match.group(1)), int(match.group(2))
    for side in (width, height):
        if side % 8 or not SIZE_MIN <= side <= SIZE_MAX:
            raise InvalidRequest(f"Invalid size '{value}': each side must be a multiple of 8 between "
                                 f"{SIZE_MIN} and {SIZE_MAX}.", param="size")
    return width, height


def input_size(width: int, height: int) -> tuple[int, int]:
    """An input image's size as an output size: scaled into 64-2048 if needed, rounded down to multiples of 8."""
    scale = min(1.0, SIZE_MAX / max(width, height))
    scale = max(scale, SIZE_MIN / max(1, min(width, height)))
    return tuple(max(SIZE_MIN, min(SIZE_MAX, int(side * scale) // 8 * 8)) for side in (width, height))  # type: ignore


def _job(body: ImageParams, prompt: str, size: tuple[int, int] | None) -> ImageJob:
    scheduler = None
    if body.scheduler is not None and body.scheduler.strip():
        scheduler = canonical_name(body.scheduler)
        if scheduler is None:
            raise InvalidRequest(f"Unknown scheduler '{body.scheduler}'; one of {', '.join(known_names())}.",
                                 param="scheduler")
    width, height = size or (None, None)
    return ImageJob(prompt=prompt, n=body.n or 1, width=width, height=height, negative_prompt=body.negative_prompt,
                    steps=body.num_inference_steps, guidance_scale=body.guidance_scale,
                    seed=None if body.seed in (None, -1) else body.seed, scheduler=scheduler)


def mask_from(mask: Any) -> Any:
    """A repaint mask (L, white = repaint): transparent pixels when the mask has alpha, else its brightness."""
    from PIL import ImageOps

    if has_alpha(mask):
        return ImageOps.invert(mask.getchannel("A"))
    return mask.convert("L")


def edit_job(body: EditRequest, settings: Any) -> ImageJob:
    """Decode image and mask (blocking). Without a mask, the image's transparent pixels are repainted."""
    from PIL import ImageOps

    image = load_image(body.image, "image", settings, mode="RGBA")
    if body.mask is not None:
        mask = mask_from(load_image(body.mask, "mask", settings, mode="RGBA"))
    elif has_alpha(image):
        mask = ImageOps.invert(image.getchannel("A"))
    else:
        raise InvalidRequest("No 'mask' was sent and 'image' has no transparent pixels: send a mask, or an "
                             "image whose transparent area marks what to repaint.", param="mask")
    job = _job(body, body.prompt, parse_size(body.size) or input_size(*image.size))
    job.image, job.mask, job.strength = image.convert("RGB"), mask, body.strength
    return job


def variation_job(body: VariationRequest, settings: Any) -> ImageJob:
    """Decode the source image (blocking); no prompt means the empty prompt."""
    image = load_image(body.image, "image", settings, mode="RGB")
    job = _job(body, body.prompt or "", parse_size(body.size) or input_size(*image.size))
    job.image, job.strength = image, 0.75 if body.strength is None else body.strength
    return job


async def read_body(request: Request, model: type[Body]) -> Body:
    """The request model from a JSON body or a multipart/urlencoded form (files become bytes)."""
    content_type = request.headers.get("content-type", "").lower()
    data: dict[str, Any] = {}
    if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        try:
            form = await request.form(max_part_size=settings_of(request).max_body_bytes)
        except HTTPException as exc:  # a malformed form is a 400 of ours; a 413 stays a 413
            if exc.status_code != 400:
                raise
            raise InvalidRequest(f"Malformed form data: {exc.detail}", param=None) from None
        try:
            for key, value in form.multi_items():
                name = key[:-2] if key.endswith("[]") else key
                if name not in data:  # lists (image[]) keep their first item
                    data[name] = await value.read() if isinstance(value, UploadFile) else value
        finally:
            await form.close()
    else:
        data = parse_json_object(await request.body())
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


# ----- running and answering ---------------------------------------------------------------------
async def run_cancellable(request: Request, run: Callable[..., Any], fn: Callable[..., ImageResult],
                          job: ImageJob) -> ImageResult | None:
    """Run `fn(job, cancel)` via `run`; set `cancel` when the client disconnects. None when cancelled."""
    cancel = threading.Event()
    task = asyncio.ensure_future(run(fn, job, cancel))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=POLL_S)
            if done:
                break
            if not cancel.is_set() and await request.is_disconnected():
                logger.info("client disconnected; stopping the generation")
                cancel.set()
    except asyncio.CancelledError:
        cancel.set()
        with contextlib.suppress(BaseException):
            await asyncio.shield(task)  # keep the model held until its thread has stopped
        raise
    try:
        return task.result()
    except GenerationCancelled:
        return None


def wanted_image_type(accept: str) -> str | None:
    """The image type to answer with raw bytes, or None for JSON (API.md: image type named, JSON not)."""
    named: list[tuple[float, int, str]] = []
    for i, part in enumerate(accept.lower().split(",")):
        mime, *params = [p.strip() for p in part.split(";")]
        q = 1.0
        for param in params:
            key, _, val = param.partition("=")
            if key.strip() == "q":
                with contextlib.suppress(ValueError):
                    q = float(val)
        if mime and q > 0:
            named.append((-q, i, mime))
    mimes = {m for _, _, m in named}
    if "application/json" in mimes:
        return None
    for _, _, mime in sorted(named):
        if mime in IMAGE_TYPES:
            return mime
        if mime == "image/*":
            return "image/png"
    return None


async def respond(request: Request, body: ImageParams, result: ImageResult) -> Response:
    """Raw image bytes (Accept, one image) or the OpenAI JSON with `url` or `b64_json` items."""
    images = result.images
    raw_type = wanted_image_type(request.headers.get("accept", ""))
    revised = getattr(body, "prompt", None)
    if raw_type and len(images) == 1:
        response: Response = Response(await asyncio.to_thread(encode, images[0], raw_type), media_type=raw_type)
    elif (body.response_format or "url") == "b64_json":
        blobs = await asyncio.to_thread(lambda: [base64.b64encode(encode(img)).decode() for img in images])
        response = FastJSONResponse({"created": int(time.time()),
                                 "data": [{"b64_json": b, "revised_prompt": revised} for b in blobs]})
    else:
        store = ImageStore(settings_of(request).output_dir)
        names = await asyncio.to_thread(lambda: [store.save(img) for img in images])
        response = FastJSONResponse({"created": int(time.time()), "data": [
            {"url": str(request.url_for("image_file", name=name)), "revised_prompt": revised} for name in names]})
    ignored = list(result.ignored) + [f for f in ("quality", "style") if getattr(body, f) is not None]
    report_ignored(response, ignored)
    return response


async def serve(request: Request, body: ImageParams, job: ImageJob, capability: str) -> Response:
    """Acquire the model for `capability`, run the job with cancellation, and answer."""
    manager = manager_of(request)
    async with manager.acquire(body.model, "diffusion", capability, token=request_token(request, body)) as model:
        fn = getattr(model, capability)
        result = await run_cancellable(request, model.run, fn, job)
    if result is None:
        return Response(status_code=499)  # the client is gone; nobody reads this
    return await respond(request, body, result)


# ----- routes ------------------------------------------------------------------------------------
@router.post("/v1/images/generations")
async def generations(body: GenerationRequest, request: Request) -> Response:
    """Text to image."""
    return await serve(request, body, _job(body, body.prompt, parse_size(body.size)), "generate")


@router.post("/v1/images/edits", openapi_extra=_body_doc(EditRequest))
async def edits(request: Request) -> Response:
    """Inpainting: JSON or multipart; without a mask the image's alpha channel is the mask."""
    body = await read_body(request, EditRequest)
    job = await asyncio.to_thread(edit_job, body, settings_of(request))
    return await serve(request, body, job, "edit")


@router.post("/v1/images/variations", openapi_extra=_body_doc(VariationRequest))
async def variations(request: Request) -> Response:
    """Image to image: JSON or multipart; optional prompt, `strength` 0-1 (default 0.75)."""
    body = await read_body(request, VariationRequest)
    job = await asyncio.to_thread(variation_job, body, settings_of(request))
    return await serve(request, body, job, "variation")


@router.get("/v1/files/images/{name}", name="image_file")
@router.head("/v1/files/images/{name}", name="image_file_head", include_in_schema=False)
async def image_file(name: str, request: Request) -> FileResponse:
    """A generated image (public: its 128-bit random name is the credential)."""
    path = ImageStore(settings_of(request).output_dir).path_for(name)
    if path is None:
        raise HTTPException(404, "Image not found.")
    return FileResponse(path, media_type="image/png",
                        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600"})
