"""Bodies the routes read themselves: a JSON object (routes taking JSON or a form), and the multipart (`/upload`)
twins of JSON routes, whose form is read into the same request model the JSON route uses.

File fields (`file`, and its spellings `files`, `image`, `images`, with or without `[]`) are collected as
media inputs (uploaded bytes, or a media string when sent as a plain form value); every other form field
becomes a field of the request model, validated exactly as the JSON body is (errors are 400s naming it).
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from core.errors import NOT_AN_OBJECT, NOT_JSON, InvalidRequest

M = TypeVar("M", bound=BaseModel)
FILE_FIELDS = ("file", "files", "image", "images")


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


async def read_upload(request: Request, model: type[M]) -> tuple[M, list[tuple[str | bytes, str]]]:
    """(request model built from the form's text fields, [(file bytes or media string, field name)])."""
    content_type = request.headers.get("content-type", "").lower()
    if not content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        raise InvalidRequest("This route takes multipart/form-data (send the image as the 'file' field).",
                             param=None)
    form = await request.form()
    fields: dict[str, Any] = {}
    media: list[tuple[str | bytes, str]] = []
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
