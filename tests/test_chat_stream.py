"""Streaming chat: frame order, shared id, finish and usage frames, [DONE], stop strings, incremental
decoding, client disconnects and errors after the stream started."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi.testclient import TestClient

from tests.fixtures.language import HELLO_ANSWER, HELLO_PROMPT, TinyLM, engine_of

BOTH_ENGINES = True  # every test using the tiny chat models runs on transformers and on llama.cpp

HELLO = [{"role": "user", "content": HELLO_PROMPT}]


def stream(client: TestClient, model: Any, **fields: Any) -> tuple[Any, list[Any]]:
    body = {"model": str(model), "messages": HELLO, "temperature": 0, "stream": True, **fields}
    frames: list[Any] = []
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if not line:
                continue
            assert line.startswith("data: ")
            payload = line[len("data: "):]
            frames.append(payload if payload == "[DONE]" else json.loads(payload))
    return r, frames


def content_of(frames: list[Any], index: int = 0) -> str:
    return "".join(f["choices"][0]["delta"].get("content") or "" for f in frames
                   if isinstance(f, dict) and f.get("choices") and f["choices"][0]["index"] == index)


def test_frames_follow_the_contract(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    r, frames = stream(lm_client, tiny_lm.path, stream_options={"include_usage": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-cache" and r.headers["x-accel-buffering"] == "no"
    assert frames[-1] == "[DONE]"
    chunks = frames[:-1]
    assert len({f["id"] for f in chunks}) == 1 and len({f["created"] for f in chunks}) == 1
    assert all(f["object"] == "chat.completion.chunk" for f in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    finish = chunks[-2]
    assert finish["choices"][0]["delta"] == {} and finish["choices"][0]["finish_reason"] == "stop"
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] > 0
    assert all("usage" not in f or f["usage"] is None for f in chunks[:-1])
    assert content_of(chunks) == HELLO_ANSWER
    assert len(chunks) > 5  # streamed piece by piece, not in one block


def test_stream_text_equals_non_stream_and_never_splits_characters(lm_client: TestClient,
                                                                    tiny_lm: TinyLM) -> None:
    _, frames = stream(lm_client, tiny_lm.path)
    pieces = [f["choices"][0]["delta"].get("content") for f in frames[1:-2]]
    assert all("\ufffd" not in p for p in pieces)
    assert any("😀" in p for p in pieces)
    full = lm_client.post("/v1/chat/completions", json={"model": str(tiny_lm.path), "messages": HELLO,
                                                        "temperature": 0}).json()
    assert "".join(pieces) == full["choices"][0]["message"]["content"]


def test_no_usage_frame_unless_asked(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    _, frames = stream(lm_client, tiny_lm.path)
    assert frames[-2]["choices"][0]["finish_reason"] == "stop"


def test_stop_strings_while_streaming(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    _, frames = stream(lm_client, tiny_lm.path, stop=["o meet y"])
    assert content_of(frames) == HELLO_ANSWER[: HELLO_ANSWER.index("o meet y")]
    assert frames[-2]["choices"][0]["finish_reason"] == "stop"


def test_length_while_streaming(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    _, frames = stream(lm_client, tiny_lm.path, max_tokens=2, stream_options={"include_usage": True})
    assert frames[-3]["choices"][0]["finish_reason"] == "length"
    assert frames[-2]["usage"]["completion_tokens"] == 2


def test_n_streams_interleave_with_indexes(lm_client: TestClient, tiny_lm: TinyLM) -> None:
    _, frames = stream(lm_client, tiny_lm.path, n=2, stream_options={"include_usage": True})
    roles = [f for f in frames[:-1] if f["choices"] and "role" in f["choices"][0]["delta"]]
    assert sorted(f["choices"][0]["index"] for f in roles) == [0, 1]
    finishes = [f for f in frames[:-1] if f["choices"] and f["choices"][0]["finish_reason"]]
    assert sorted(f["choices"][0]["index"] for f in finishes) == [0, 1]
    assert content_of(frames, 0) == content_of(frames, 1) == HELLO_ANSWER
    assert frames[-2]["usage"]["completion_tokens"] == 2 * frames[-2]["usage"]["completion_tokens"] // 2


def _scope(body: bytes) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": "/v1/chat/completions",
            "raw_path": b"/v1/chat/completions", "query_string": b"", "root_path": "",
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 5000), "server": ("testserver", 80)}


def test_disconnect_stops_generation_within_one_token(lm_client: TestClient, tiny_lm: TinyLM,
                                                      monkeypatch: Any) -> None:
    lm_client.post("/v1/chat/completions", json={"model": str(tiny_lm.random_path), "messages": HELLO,
                                                 "max_tokens": 1})  # loaded
    engine = engine_of(lm_client, tiny_lm.random_path)
    forward = engine.backend.step
    calls = {"n": 0, "at_disconnect": None}

    def slow_forward(*args: Any, **kwargs: Any) -> Any:
        import time

        calls["n"] += 1
        time.sleep(0.02)
        return forward(*args, **kwargs)

    monkeypatch.setattr(engine.backend, "step", slow_forward)
    body = json.dumps({"model": str(tiny_lm.random_path), "messages": HELLO, "stream": True,
                       "max_tokens": 400, "temperature": 0}).encode()

    async def scenario() -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []
        content_frames = asyncio.Event()
        first = True

        async def receive() -> dict[str, Any]:
            nonlocal first
            if first:
                first = False
                return {"type": "http.request", "body": body, "more_body": False}
            await content_frames.wait()
            calls["at_disconnect"] = calls["n"]
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            if message["type"] == "http.response.body" and b'"content"' in message.get("body", b"") \
                    and b'"role"' not in message["body"] and len(sent) > 4:
                content_frames.set()

        await asyncio.wait_for(lm_client.app(_scope(body), receive, send), 30)  # type: ignore[arg-type]
        await asyncio.sleep(0.2)  # let the engine notice the cancellation
        return sent

    sent = lm_client.portal.call(scenario)  # type: ignore[union-attr]
    assert sent[0]["status"] == 200
    reasons = [(reason, tokens) for req, reason, tokens in engine.history if req.params.max_new_tokens == 400]
    assert reasons and reasons[-1][0] == "cancelled" and reasons[-1][1] < 400
    assert calls["at_disconnect"] is not None
    assert calls["n"] - calls["at_disconnect"] <= 1  # at most one more decode step after the disconnect


def test_error_after_stream_started_is_an_error_frame(lm_client: TestClient, tiny_lm: TinyLM,
                                                      monkeypatch: Any) -> None:
    lm_client.post("/v1/chat/completions", json={"model": str(tiny_lm.random_path), "messages": HELLO,
                                                 "max_tokens": 1})
    engine = engine_of(lm_client, tiny_lm.random_path)
    forward = engine.backend.step
    calls = {"n": 0}

    def failing_forward(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("device fell over")
        return forward(*args, **kwargs)

    monkeypatch.setattr(engine.backend, "step", failing_forward)
    r, frames = stream(lm_client, tiny_lm.random_path, max_tokens=50)
    assert r.status_code == 200
    assert frames[-1] == "[DONE]"
    error = frames[-2]["error"]
    assert error["type"] == "server_error" and "device fell over" not in error["message"]
    assert len(frames) > 3  # content was streamed before the error
