"""Speech to text: POST /v1/audio/transcriptions and /v1/audio/translations (multipart as OpenAI, or JSON).

Wire types first, then the handlers: read the body (multipart form or JSON with `file` as a media string),
decode the audio off the event loop (400 param `file` for anything undecodable or too long), run the model
on its own worker thread, and shape the answer as `response_format` asks.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import AliasChoices, Field, ValidationError, field_validator

from core.audio import Audio, read_audio, resample
from core.errors import InvalidRequest
from core.media import load_media_bytes
from core.subtitles import CONTENT_TYPES, to_srt, to_verbose_json, to_vtt, usage
from routers.common import FastJSONResponse, OpenAIRequest, manager_of, report_ignored, request_token, settings_of
from routers.upload import parse_json_object

router = APIRouter()

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]
Granularity = Literal["word", "segment"]
TIMED_FORMATS = ("verbose_json", "srt", "vtt")


class SpeechRequest(OpenAIRequest):
    """The fields of both audio routes (the multipart form and the JSON body share them)."""

    file: str | None = Field(None, description="JSON only: the audio as base64, a data: URL or a media path.")
    model: str | None = None
    language: str | None = Field(None, description="Source language (ISO-639-1, e.g. 'en'); detected if unset.")
    prompt: str | None = None
    response_format: ResponseFormat = "json"
    temperature: float | None = Field(None, ge=0, le=1)
    timestamp_granularities: list[Granularity] | None = Field(
        None, validation_alias=AliasChoices("timestamp_granularities", "timestamp_granularities[]"))

    @field_validator("language", "prompt", "model", mode="before")
    @classmethod
    def _blank_is_unset(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("timestamp_granularities", mode="before")
    @classmethod
    def _one_is_a_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


def _openapi() -> dict[str, Any]:
    """Request body documentation for /docs (the handlers read the body themselves: form or JSON)."""
    schema = SpeechRequest.model_json_schema()
    schema.pop("title", None)
    form = {**schema, "properties": {**schema["properties"], "file": {"type": "string", "format": "binary"}},
            "required": ["file"]}
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": form},
        "application/json": {"schema": {**schema, "required": ["file"]}}}}}


async def _read_form(request: Request) -> tuple[dict[str, Any], bytes | None]:
    form = await request.form()
    fields: dict[str, Any] = {}
    data: bytes | None = None
    for key, value in form.multi_items():
        if key == "file":
            data = await value.read() if hasattr(value, "read") else None
            if data is None:  # a plain text field: a media string, as in JSON
                fields["file"] = value
        elif key in ("timestamp_granularities[]", "timestamp_granularities"):
            fields.setdefault("timestamp_granularities", []).append(value)
        else:
            fields[key] = value
    return fields, data


async def parse_request(request: Request) -> tuple[SpeechRequest, bytes]:
    """The validated fields and the raw bytes of the uploaded audio."""
    content_type = request.headers.get("content-type", "").lower()
    data: bytes | None = None
    if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        fields, data = await _read_form(request)
    elif content_type.startswith("application/json") or not content_type:
        fields = parse_json_object(await request.body())
    else:
        raise InvalidRequest("Send the audio as multipart/form-data (field 'file') or as JSON with 'file' in "
                             "base64.", param="file")
    try:
        body = SpeechRequest.model_validate(fields)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    if data is None:
        if not body.file:
            raise InvalidRequest("Missing required field 'file' (the audio to transcribe).", param="file")
        data = await asyncio.to_thread(load_media_bytes, body.file, "file", settings_of(request))
    return body, data


def _ignored(body: SpeechRequest, model: Any) -> set[str]:
    """Known fields given that this model cannot honour (reported in X-Ignored-Params)."""
    given = {"language": body.language, "prompt": body.prompt, "temperature": body.temperature or None}
    names = {name for name, value in given.items() if value is not None and name not in model.honours}
    grains = set(body.timestamp_granularities or ())
    if grains and (body.response_format != "verbose_json" or ("word" in grains and not model.word_timestamps)):
        names.add("timestamp_granularities")
    return names


def render(transcript: Any, body: SpeechRequest, task: str, audio: Audio, with_words: bool) -> Response:
    """The response in the requested format."""
    fmt = body.response_format
    if fmt == "text":
        return Response(transcript.text.strip(), media_type=CONTENT_TYPES["text"])
    if fmt == "srt":
        return Response(to_srt(transcript.segments), media_type=CONTENT_TYPES["srt"])
    if fmt == "vtt":
        return Response(to_vtt(transcript.segments), media_type=CONTENT_TYPES["vtt"])
    if fmt == "verbose_json":
        return FastJSONResponse(to_verbose_json(transcript, task, audio.duration, with_words))
    return FastJSONResponse({"text": transcript.text.strip(), "usage": usage(audio.duration)})


async def speech_to_text(request: Request, task: str) -> Response:
    """Shared handler: `task` is 'transcribe' or 'translate'."""
    body, data = await parse_request(request)
    audio = await asyncio.to_thread(read_audio, data, settings_of(request).max_audio_seconds)
    grains = set(body.timestamp_granularities or ())
    timed = body.response_format in TIMED_FORMATS
    async with manager_of(request).acquire(body.model, "audio", task, token=request_token(request, body)) as model:
        samples = await asyncio.to_thread(resample, audio.samples, audio.rate, model.sampling_rate)
        with_words = body.response_format == "verbose_json" and "word" in grains and model.word_timestamps
        transcript = await model.run(model.transcribe, samples, task=task, language=body.language,
                                     prompt=body.prompt, temperature=body.temperature, timestamps=timed,
                                     words=with_words)
        ignored = _ignored(body, model)
    response = render(transcript, body, task, audio, with_words)
    report_ignored(response, ignored)
    return response


@router.post("/v1/audio/transcriptions", summary="Transcribe audio (OpenAI-compatible)", openapi_extra=_openapi())
async def transcriptions(request: Request) -> Response:
    """Speech to text in the audio's language (given in `language`, or detected)."""
    return await speech_to_text(request, "transcribe")


@router.post("/v1/audio/translations", summary="Translate audio into English text (OpenAI-compatible)",
             openapi_extra=_openapi())
async def translations(request: Request) -> Response:
    """Speech in any language to English text (Whisper-family models)."""
    return await speech_to_text(request, "translate")
