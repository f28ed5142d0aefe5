"""One ASGI middleware for what every request needs: request id, API key, body limit, metrics, and the
catch-all that turns unexpected exceptions into the 500 envelope (never a stack trace)."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import AuthenticationError, PayloadTooLarge, Unavailable, classify, envelope
from core.logs import request_id_var

logger = logging.getLogger("universal_runtime.http")

PUBLIC_PREFIXES = ("/v1/files/images/",)
PUBLIC_PATHS = ("/health",)


async def send_error(send: Send, exc: BaseException, request_id: str) -> None:
    """Send an error response built by the one classifier."""
    status, body, headers = classify(exc, request_id)
    raw = json.dumps(body).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()),
            (b"x-request-id", request_id.encode())]
    hdrs += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": raw})


class InFlight:
    """HTTP requests from arrival until their response is complete, so shutdown can wait for the last bytes
    to go out under any ASGI server (uvicorn waits for its connections itself; a test client does not)."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count <= 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """True once no request is in flight; False after `timeout` seconds."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


class RuntimeMiddleware:
    """Request id, auth, body limit, metrics, catch-all errors."""

    def __init__(self, app: ASGIApp, settings: Any, metrics: Any, inflight: InFlight | None = None) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.inflight = inflight or InFlight()

    @staticmethod
    def _draining(scope: Scope) -> bool:
        app = scope.get("app")
        return bool(getattr(getattr(app, "state", None), "draining", False))

    def _authorized(self, scope: Scope, headers: dict[bytes, bytes]) -> bool:
        key = self.settings.api_key
        path = scope.get("path", "")
        if not key or path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES) or scope.get("method") == "OPTIONS":
            return True
        auth = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, given = auth.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), key.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given_id = headers.get(b"x-request-id", b"").decode("latin-1").strip()
        request_id = given_id[:128] if given_id else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        self.inflight.enter()
        started = time.perf_counter()
        state = {"status": 500, "started": False}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["started"] = True
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        limit = self.settings.max_body_bytes
        received = 0

        async def receive_wrapper() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"Request body is larger than {self.settings.max_body_mb:g} MB.")
            return message

        try:
            if self._draining(scope):  # shutdown started: in-flight requests finish, new ones are refused
                await send_error(send_wrapper, Unavailable("The server is shutting down; retry on another "
                                                           "instance or later."), request_id)
                return
            if not self._authorized(scope, headers):
                await send_error(send_wrapper, AuthenticationError("Missing or invalid API key.", param=None,
                                                                   headers={"WWW-Authenticate": "Bearer"}),
                                 request_id)
                return
            length = headers.get(b"content-length")
            if length and length.isdigit() and int(length) > limit:
                await send_error(send_wrapper, PayloadTooLarge(
                    f"Request body is larger than {self.settings.max_body_mb:g} MB.", param=None), request_id)
                return
            await self.app(scope, receive_wrapper, send_wrapper)
        except Exception as exc:  # noqa: BLE001 - the catch-all of the error classifier
            if state["started"]:
                logger.exception("error after the response started")
            else:
                await send_error(send_wrapper, exc, request_id)
        finally:
            route = scope.get("route")
            route_path = getattr(route, "path", None) or "unmatched"
            if self.metrics is not None:
                self.metrics.observe_request(route_path, int(state["status"]), time.perf_counter() - started)
            self.inflight.leave()
            request_id_var.reset(token)


class EnvelopeCORSMiddleware(CORSMiddleware):
    """Starlette's CORS middleware, with a refused preflight answered in the API.md error envelope."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        message = bytes(response.body).decode() + "."
        headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
        return JSONResponse(envelope(message, "invalid_request_error", "cors_not_allowed", None), status_code=400,
                            headers=headers)

