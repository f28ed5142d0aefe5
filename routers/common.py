"""What every router shares: collaborators from the app, the base request model, token and header helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import pydantic_core
from fastapi import Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict
from starlette.types import Receive, Scope, Send

from core.manager import ModelManager
from core.settings import Settings


class OpenAIRequest(BaseModel):
    """Base of every JSON request body: unknown fields are accepted and ignored (API.md)."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    def extra_fields(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class FastJSONResponse(JSONResponse):
    """A JSON response encoded by pydantic-core's Rust serializer (already a dependency, via pydantic).

    About 10x faster than `json.dumps` on long float lists: an embedding of 384 floats takes 0.03 ms
    instead of 0.36 ms, time the event loop spends holding the GIL that the model threads need.
    """

    def render(self, content: Any) -> bytes:
        return pydantic_core.to_json(content)


def manager_of(request: Request) -> ModelManager:
    return request.app.state.manager


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


def request_token(request: Request, body: OpenAIRequest | dict[str, Any] | None = None) -> str | None:
    """The per-request Hugging Face token: header, top-level `huggingface_token`, or inside `extra_body`."""
    header = request.headers.get("x-lf-huggingface-token")
    if header:
        return header
    data = body.extra_fields() if isinstance(body, OpenAIRequest) else (body or {})
    token = data.get("huggingface_token")
    if not token and isinstance(data.get("extra_body"), dict):
        token = data["extra_body"].get("huggingface_token")
    return str(token) if token else None


def report_ignored(response: Response, names: list[str] | set[str]) -> None:
    """Add names to the X-Ignored-Params header (harmless known fields the model could not honour)."""
    if not names:
        return
    existing = [n for n in response.headers.get("X-Ignored-Params", "").split(",") if n]
    merged = list(dict.fromkeys(existing + sorted(names)))
    response.headers["X-Ignored-Params"] = ",".join(merged)


class HeldStream(StreamingResponse):
    """A streamed answer whose clean-up (cancel the work, release the model) runs however the stream ends:
    finished, failed, or the client gone."""

    def __init__(self, content: AsyncIterator[Any], on_close: Callable[[], Awaitable[Any]], media_type: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(content, media_type=media_type, headers=headers)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.on_close()
