"""The gateway in front of the runtime replicas: routes each HTTP request by its model, passes it through
unchanged, and turns a lost replica into the runtime's own 503 `unavailable` envelope.

Serve's HTTP proxy routes before any body is read, so it cannot send a request to the replica that holds the
request's model. The gateway (a light ASGI app, no models, no torch) reads the body, takes the model id
(`serve_multiplexed_model_id` header, else the JSON `model` field, else the multipart `model` field) and calls
the runtime deployment through a handle with `multiplexed_model_id` set: Serve's router then prefers a replica
that already registered that id. The replica runs the request through the single server's own FastAPI app
(`UniversalRuntime.forward`) and streams the ASGI messages back; the gateway writes them out as they come, so
streams stay streams. A request whose body never mentions `stream` cannot stream, so its whole answer comes
back in one reply (`forward_whole`), saving a remote round trip per message.

A replica that dies before answering (killed, crashed, out of memory) gives 503 `unavailable` with
`Retry-After: 1`; Serve starts a replacement and later requests succeed. A replica that dies after the
response started can only cut the stream short (the status line is already sent). Every other answer,
errors included, is the runtime's own.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from ray import serve
from starlette.types import Message, Receive, Scope, Send

from deploy.ray.local import bind_replica_grpc_to_loopback

logger = logging.getLogger("universal_runtime.ray")

MODEL_HEADER = b"serve_multiplexed_model_id"
_FORM_MODEL = re.compile(rb'name="model"\r\n(?:[^\r\n]*\r\n)*\r\n([^\r\n]{1,512})\r\n')
_SCOPE_KEYS = ("type", "asgi", "http_version", "method", "scheme", "path", "raw_path", "query_string",
               "root_path", "headers", "client", "server")


def model_id_of(headers: list[tuple[bytes, bytes]], body: bytes) -> str:
    """The id to route on: the `serve_multiplexed_model_id` header, the JSON body's `model`, the multipart
    `model` field, or "" (no model: any replica)."""
    found = dict((k.lower(), v) for k, v in headers)
    if found.get(MODEL_HEADER):
        return found[MODEL_HEADER].decode("latin-1")
    content_type = found.get(b"content-type", b"").lower()
    if body and b"json" in content_type:
        try:
            data = json.loads(body)
        except ValueError:
            return ""
        model = data.get("model") if isinstance(data, dict) else None
        return model if isinstance(model, str) else ""
    if body and b"multipart/form-data" in content_type:
        match = _FORM_MODEL.search(body)
        return match.group(1).decode("utf-8", "replace") if match else ""
    return ""


def may_stream(body: bytes) -> bool:
    """Whether the answer may be a stream: the body names `stream` or `stream_format` anywhere (JSON field or
    form field). Such requests are relayed message by message; any other answer comes back in one reply."""
    return b"stream" in body


def portable_scope(scope: Scope) -> dict[str, Any]:
    """The parts of an HTTP scope that can travel to another process."""
    out = {k: scope[k] for k in _SCOPE_KEYS if k in scope}
    out["headers"] = [(bytes(k), bytes(v)) for k, v in scope.get("headers", [])]
    out["root_path"] = ""
    return out


def _lost_replica_errors() -> tuple[type[BaseException], ...]:
    from ray.exceptions import ActorUnavailableError, RayActorError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    return RayActorError, ActorUnavailableError, BackPressureError, DeploymentUnavailableError


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionAbortedError("client went away")
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _unavailable(send: Send, reason: str) -> None:
    from core.errors import Unavailable, classify

    status, body, headers = classify(Unavailable(f"The replica serving this request was lost ({reason}); "
                                                 "retry.", retry_after=1))
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
           *((k.lower().encode(), v.encode()) for k, v in headers.items())]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


async def _cut_stream(send: Send, path: str, reason: str) -> None:
    """End a server-sent-event stream whose replica was lost as the single server ends a stream that fails
    after it started: one error event (code `unavailable`), then `[DONE]`, so a client sees an error rather
    than an answer that looks complete."""
    from core.errors import Unavailable, classify

    _, body, _ = classify(Unavailable(f"The replica serving this stream was lost ({reason}); retry."))
    err = body["error"]
    if path.startswith("/v1/responses"):  # the Responses API's error event
        event = {"type": "error", "code": err.get("code"), "message": err.get("message"), "param": None}
        text = f"event: error\ndata: {json.dumps(event)}\n\n"
    else:  # chat, completions, speech: an `error` frame, then [DONE]
        text = f"data: {json.dumps({'error': err})}\n\ndata: [DONE]\n\n"
    await send({"type": "http.response.body", "body": text.encode(), "more_body": False})


def _is_event_stream(message: Message) -> bool:
    return any(k.lower() == b"content-type" and v.startswith(b"text/event-stream")
               for k, v in message.get("headers", []))


class GatewayASGI:
    """ASGI app of the gateway deployment; `handle` is the runtime deployment's handle."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.lost: tuple[type[BaseException], ...] = _lost_replica_errors()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            body = await _read_body(receive)
        except ConnectionAbortedError:
            return
        model_id = model_id_of(scope.get("headers", []), body)
        started = events = False
        try:
            if may_stream(body):
                handle = self.handle.options(stream=True, multiplexed_model_id=model_id)
                async for message in handle.forward.remote(portable_scope(scope), body):
                    if message["type"] == "http.response.start":
                        started, events = True, _is_event_stream(message)
                    await send(message)
            else:
                handle = self.handle.options(multiplexed_model_id=model_id)
                for message in await handle.forward_whole.remote(portable_scope(scope), body):
                    started = started or message["type"] == "http.response.start"
                    await send(message)
        except self.lost as exc:
            logger.warning("replica lost during %s %s: %s", scope.get("method"), scope.get("path"), exc)
            if not started:
                await _unavailable(send, type(exc).__name__)
            elif events:
                await _cut_stream(send, str(scope.get("path", "")), type(exc).__name__)
            else:  # the status line is out: end the body (a reader of chunked audio sees it cut short)
                await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


@serve.ingress()
class Gateway:
    """Ingress deployment: routes each request to a runtime replica by model id (see the module docstring)."""

    def __init__(self, runtime: Any) -> None:
        bind_replica_grpc_to_loopback()
        self.runtime = runtime

    def __serve_build_asgi_app__(self) -> GatewayASGI:
        """Called by Serve on the replica after `__init__`."""
        return GatewayASGI(self.runtime)
