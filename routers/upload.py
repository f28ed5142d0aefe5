"""Bodies the routes read themselves: a JSON object (routes taking JSON or a form), and the multipart (`/upload`)
twins of JSON routes, whose form is read into the same request model the JSON route uses.

File fields (`file`, and its spellings `files`, `image`, `images`, with or without `[]`) are collected as
media inputs (uploaded bytes, or a media string when sent as a plain form value); every other form field
becomes a field of the request model, validated exactly as the JSON body is (errors are 400s naming it).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from core.errors import NOT_AN_OBJECT, NOT_JSON, InvalidRequest

M = TypeVar("M", bound=BaseModel)
FILE_FIELDS = ("file", "files", "image", "images")
Media = list[tuple[str | bytes, str]]
# (request, response, body, media inputs, whether they came as an upload) -> response body
Handler = Callable[[Request, Response, Any, Media, bool], Awaitable[dict[str, Any]]]


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """A body that must be a JSON object (routes that read their body themselves: JSON or a form), parsed;
    anything else is a 400 `invalid_value`, as FastAPI's own JSON bodies get."""
    if not raw.strip():
        raise InvalidRequest("Request body is empty: send a JSON object or multipart/form-data.", param=None)
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes ("[[[[...")
        raise InvalidRequest(NOT_JSON, param=None) from None
    if not isinstance(data, dict):
        raise InvalidRequest(NOT_AN_OBJECT, param=None)
    return data


async def read_upload(request: Request, model: type[M]) -> tuple[M, Media]:
    """(request model built from the form's text fields, [(file bytes or media string, field name)])."""
    content_type = request.headers.get("content-type", "").lower()
    if not content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        raise InvalidRequest("This route takes multipart/form-data (send the image as the 'file' field).",
                             param=None)
    form = await request.form()
    fields: dict[str, Any] = {}
    media: Media = []
    for key, value in form.multi_items():
        name = key[:-2] if key.endswith("[]") else key
        if name in FILE_FIELDS:
            data = await value.read() if hasattr(value, "read") else value
            media.append((data, name))
        elif key in fields:  # a repeated field (labels=cat&labels=dog) becomes a list
            previous = fields[key]
            fields[key] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            fields[key] = value
    if len(media) > 1:
        media = [(value, f"{name}.{i}") for i, (value, name) in enumerate(media)]
    try:
        body = model.model_validate(fields)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    return body, media


def add_json_and_upload(router: APIRouter, path: str, body_type: type[BaseModel], handler: Handler, doc: str,
                        upload_fields: str) -> None:
    """Register `POST path` (a JSON body of `body_type`, its media from `body.media()`) and its multipart twin
    `POST path/upload` (`upload_fields` names the form's fields), both answered by `handler`."""
    name = path.rstrip("/").rsplit("/", 1)[-1]

    async def json_route(body: Any, request: Request, response: Response) -> dict[str, Any]:
        return await handler(request, response, body, body.media(), False)

    async def upload_route(request: Request, response: Response) -> dict[str, Any]:
        body, media = await read_upload(request, body_type)
        return await handler(request, response, body, media, True)

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    json_route.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("body", kind, annotation=body_type), inspect.Parameter("request", kind, annotation=Request),
         inspect.Parameter("response", kind, annotation=Response)], return_annotation=dict[str, Any])
    json_route.__doc__ = doc
    upload_route.__doc__ = f"Multipart twin of {path} ({upload_fields})."
    router.post(path, name=name)(json_route)
    router.post(f"{path}/upload", name=f"{name}_upload")(upload_route)
