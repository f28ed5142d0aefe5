"""The Ray Serve gateway (deploy/ray/gateway.py) without a cluster: how it reads the model of a request, and
how it ends a response whose replica is lost (a fake Serve handle raising Ray's own lost-actor error)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from deploy.ray.local import loopback_only

loopback_only()  # before ray is imported: its node address is read then (tests/test_ray_serve.py)
pytest.importorskip("ray.serve", reason="ray[serve] is not installed; the Ray Serve tests are skipped")


def test_the_gateway_routes_on_the_header_the_json_model_or_the_form_model() -> None:
    from deploy.ray.gateway import model_id_of

    json_type = [(b"content-type", b"application/json")]
    assert model_id_of(json_type, b'{"model": "m1", "input": "x"}') == "m1"
    assert model_id_of([*json_type, (b"serve_multiplexed_model_id", b"m2")], b'{"model": "m1"}') == "m2"
    assert model_id_of(json_type, b"not json") == "" and model_id_of([], b"") == ""
    form = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nRIFF\r\n'
            b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-x\r\n--b--\r\n')
    assert model_id_of([(b"content-type", b"multipart/form-data; boundary=b")], form) == "whisper-x"


class _LostMidStream:
    """A Serve handle whose replica sends the start of an event stream and one frame, then is lost."""

    def __init__(self) -> None:
        self.forward = self

    def options(self, **_: Any) -> _LostMidStream:
        return self

    async def remote(self, scope: dict[str, Any], body: bytes) -> AsyncIterator[dict[str, Any]]:
        from ray.exceptions import RayActorError

        yield {"type": "http.response.start", "status": 200,
               "headers": [(b"content-type", b"text/event-stream; charset=utf-8")]}
        yield {"type": "http.response.body", "body": b'data: {"partial": true}\n\n', "more_body": True}
        raise RayActorError()


def _run_gateway(path: str) -> list[dict[str, Any]]:
    from deploy.ray.gateway import GatewayASGI

    sent: list[dict[str, Any]] = []
    body = json.dumps({"model": "m", "stream": True}).encode()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": [(b"content-type", b"application/json")]}
    asyncio.run(GatewayASGI(_LostMidStream())(scope, receive, send))
    return sent


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"])
def test_a_stream_whose_replica_is_lost_ends_with_an_error_event_not_as_if_complete(path: str) -> None:
    sent = _run_gateway(path)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body", "http.response.body"]
    last = sent[-1]
    assert last["more_body"] is False
    text = last["body"].decode()
    if path == "/v1/responses":  # the Responses API's `error` event
        assert text.startswith("event: error\ndata: ")
        event = json.loads(text.split("data: ", 1)[1])
        assert (event["type"], event["code"]) == ("error", "unavailable")
    else:  # chat: an error frame, then [DONE], as the single server ends a failing stream
        frames = [f for f in text.split("\n\n") if f]
        assert frames[-1] == "data: [DONE]"
        assert json.loads(frames[0][6:])["error"]["code"] == "unavailable"
