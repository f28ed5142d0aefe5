"""Text to speech: POST /v1/audio/speech, as OpenAI's audio speech API.

The body is checked before any model is touched (`input` length, `speed` range, a `response_format` this
install can write). The model cuts the input into sentence pieces and speaks them one at a time on its
worker thread. Without `stream_format` the answer is a whole audio file; `stream_format: "audio"` sends each
piece's encoded bytes as soon as it is spoken (a chunked body), `"sse"` sends them as base64
`speech.audio.delta` events followed by `speech.audio.done` with the usage. A stream holds the model until it
ends.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any, Literal

import anyio
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from core.errors import InvalidRequest, classify
from core.logs import request_id_var
from models.speech import CONTENT_TYPES, StreamEncoder, check_format, encode_file
from routers.common import HeldStream, OpenAIRequest, manager_of, report_ignored, request_token, settings_of

router = APIRouter()
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
ResponseFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]


class VoiceId(BaseModel):
    """OpenAI's custom-voice reference `{"id": "..."}`: the id names one of the model's voices."""

    model_config = ConfigDict(extra="allow")

    id: str


class SpeechRequest(OpenAIRequest):
    """The body of POST /v1/audio/speech (OpenAI's fields)."""

    model: str = Field(min_length=1, description="A text-to-speech model: hub id, local folder or alias.")
    input: str = Field(description="The text to speak (at most UNIVERSAL_RUNTIME_MAX_SPEECH_INPUT_CHARS "
                                   "characters, default 4096).")
    voice: str | VoiceId | None = Field(None, description="One of the model's voices (speaker presets, speaker "
                                                          "embeddings or speaker numbers); any value for a model "
                                                          "with one voice.")
    instructions: str | None = Field(None, description="Accepted; no local model follows it (X-Ignored-Params).")
    response_format: ResponseFormat = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] | None = Field(
        None, description="audio: the file's bytes as each sentence is spoken; sse: speech.audio.delta events.")

    def voice_name(self) -> str | None:
        voice = self.voice.id if isinstance(self.voice, VoiceId) else self.voice
        return voice.strip() or None if voice is not None else None


def _check_input(text: str, limit: int) -> None:
    if not text.strip():
        raise InvalidRequest("'input' is empty: give the text to speak.", param="input")
    if len(text) > limit:
        raise InvalidRequest(f"'input' is {len(text)} characters long; this server speaks at most {limit} "
                             "(UNIVERSAL_RUNTIME_MAX_SPEECH_INPUT_CHARS).", param="input")


def _next_chunk(job: Any, encoder: StreamEncoder) -> bytes | None:
    """Speak the next piece and encode it (on the model's worker thread); the encoder's tail after the last
    piece, then None."""
    samples = job.next()
    if samples is not None:
        return encoder.push(samples)
    return None if encoder.finished else encoder.finish()


async def _chunks(model: Any, job: Any, encoder: StreamEncoder) -> AsyncIterator[bytes]:
    """The encoded bytes, piece by piece (empty chunks skipped)."""
    try:
        while (chunk := await model.run(_next_chunk, job, encoder)) is not None:
            if chunk:
                yield chunk
    finally:
        encoder.close()


async def _events(model: Any, job: Any, encoder: StreamEncoder) -> AsyncIterator[str]:
    """`speech.audio.delta` events, then `speech.audio.done`; an error is one `error` event, then [DONE]."""
    try:
        async for chunk in _chunks(model, job, encoder):
            yield "data: " + json.dumps({"type": "speech.audio.delta",
                                         "audio": base64.b64encode(chunk).decode()}) + "\n\n"
        yield "data: " + json.dumps({"type": "speech.audio.done", "usage": job.usage()}) + "\n\n"
    except Exception as exc:  # noqa: BLE001 - reported in-band: the response has started
        _, body, _ = classify(exc, request_id_var.get())
        yield "data: " + json.dumps({"error": body["error"]}) + "\n\ndata: [DONE]\n\n"


@router.post("/v1/audio/speech", summary="Text to speech (OpenAI-compatible)", response_class=Response,
             responses={200: {"description": "The audio (or server-sent events with stream_format sse).",
                              "content": {**{ct: {} for ct in CONTENT_TYPES.values()}, "text/event-stream": {}}}})
async def speech(body: SpeechRequest, request: Request) -> Response:
    """Speak `input` with `model` in `voice`, as `response_format` audio at `speed`, whole or streamed."""
    _check_input(body.input, settings_of(request).max_speech_input_chars)
    fmt = body.response_format
    check_format(fmt)
    stack = AsyncExitStack()
    model = await stack.enter_async_context(manager_of(request).acquire(
        body.model, "speech", "speech", token=request_token(request, body)))
    try:
        voice, voice_ignored = model.pick_voice(body.voice_name())
        job = await model.run(model.start, body.input, voice, body.speed)
        encoder = StreamEncoder(fmt, model.sampling_rate) if body.stream_format else None
    except BaseException:
        await stack.aclose()
        raise
    ignored = {"voice"} if voice_ignored else set()
    if body.instructions:
        ignored.add("instructions")
    response: Response
    if encoder is None:
        async with stack:
            samples = await model.run(job.all)
        response = Response(await anyio.to_thread.run_sync(encode_file, samples, model.sampling_rate, fmt),
                            media_type=CONTENT_TYPES[fmt])
    elif body.stream_format == "audio":
        response = HeldStream(_chunks(model, job, encoder), stack.aclose, CONTENT_TYPES[fmt])
    else:
        response = HeldStream(_events(model, job, encoder), stack.aclose, "text/event-stream", dict(SSE_HEADERS))
    report_ignored(response, ignored)
    return response
