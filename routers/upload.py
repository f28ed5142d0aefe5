"""Multipart (`/upload`) twins of JSON routes: read the form into the same request model the JSON route uses.

File fields (`file`, and its spellings `files`, `image`, `images`, with or without `[]`) are collected as
media inputs (uploaded bytes, or a media string when sent as a plain form value); every other form field
becomes a field of the request model, validated exactly as the JSON body is (errors are 400s naming it).
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from core.errors import InvalidRequest

M = TypeVar("M", bound=BaseModel)
FILE_FIELDS = ("file", "files", "image", "images")


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
