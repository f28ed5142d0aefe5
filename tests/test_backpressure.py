"""Backpressure: a bounded queue per model (429 + Retry-After), 503 `insufficient_memory` when a model cannot
fit, and graceful shutdown (running requests finish, new ones get 503 `unavailable`, every model unloads)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from core.manager import ModelManager
from core.resolve import weight_bytes
from server import create_app
from tests.conftest import make_settings
from tests.fakes import FakeLoader, FakeResolver
from tests.hardening import (  # noqa: F401 - long_prompt_fixture provides `long_prompt`
    LONG,
    assert_envelope,
    chat_body,
    in_background,
    long_prompt_fixture,
    start_uvicorn,
    wait_until,
)


def chat(c: Any, model: Path | str, max_tokens: int, content: str = "hi") -> Any:
    return c.post("/v1/chat/completions", json=chat_body(model, max_tokens, content))


def test_full_model_queue_answers_429_with_retry_after(client_factory: Any, tiny_lm: Any, tiny_st_folder: Path,
                                                       long_prompt: str) -> None:
    c = client_factory(max_queue_per_model=2)
    model = tiny_lm.random_path
    assert chat(c, model, 1).status_code == 200
    entry = c.app.state.manager.find(str(model))[0]
    running = [in_background(lambda: chat(c, model, LONG, long_prompt)) for _ in range(2)]
    assert wait_until(lambda: entry.active == 2)
    refused = chat(c, model, 1)
    body = assert_envelope(refused, 429, "server_overloaded")
    assert body["error"]["type"] == "rate_limit_error"
    assert int(refused.headers["Retry-After"]) >= 1
    # the bound is per model: another model is served meanwhile
    assert c.post("/v1/embeddings", json={"model": str(tiny_st_folder), "input": "hi"}).status_code == 200
    assert entry.active == 2
    for thread, out in running:
        thread.join(30)
        assert out["result"].status_code == 200
        assert out["result"].json()["usage"]["completion_tokens"] == LONG
    assert chat(c, model, 1).status_code == 200  # the queue drained


def test_model_that_cannot_fit_is_503_and_the_running_request_is_unaffected(client_factory: Any, tiny_lm: Any,
                                                                            tiny_st_folder: Path,
                                                                            long_prompt: str) -> None:
    c = client_factory()
    manager = c.app.state.manager
    model = tiny_lm.random_path
    assert chat(c, model, 1).status_code == 200
    held = manager.find(str(model))[0]
    manager.settings.memory_budget = str(held.bytes + weight_bytes(tiny_st_folder) - 1)
    thread, out = in_background(lambda: chat(c, model, LONG, long_prompt))
    assert wait_until(lambda: held.active == 1)
    refused = c.post("/v1/embeddings", json={"model": str(tiny_st_folder), "input": "hi"})
    body = assert_envelope(refused, 503, "insufficient_memory")
    assert body["error"]["type"] == "server_error" and int(refused.headers["Retry-After"]) >= 1
    assert held.active == 1 and not held.closing  # the running model was not touched
    thread.join(30)
    assert out["result"].status_code == 200 and out["result"].json()["usage"]["completion_tokens"] == LONG
    # once the first model is idle it is evicted to make room
    assert c.post("/v1/embeddings", json={"model": str(tiny_st_folder), "input": "hi"}).status_code == 200
    assert c.get("/health").json()["loaded_models"] == [str(tiny_st_folder)]


def test_model_larger_than_the_whole_budget_is_503_without_loading(client_factory: Any,
                                                                    tiny_st_folder: Path) -> None:
    c = client_factory(memory_budget="1000")
    assert_envelope(c.post("/v1/embeddings", json={"model": str(tiny_st_folder), "input": "hi"}), 503,
                    "insufficient_memory")
    assert c.get("/health").json()["loaded_models"] == []


# ----- graceful shutdown ----------------------------------------------------------------------------------
def slow_app(tmp_path: Path, **overrides: Any) -> tuple[FastAPI, ModelManager]:
    """A real app whose /slow route holds a fake model for `seconds` on the model's worker thread."""
    settings = make_settings(tmp_path, **overrides)
    manager = ModelManager(settings, FakeResolver(), loader=FakeLoader())
    app = create_app(settings, manager)

    async def slow(seconds: float = 0.0, tail: float = 0.0) -> dict[str, str]:
        async with manager.acquire("fake/a", "encoder") as model:
            done = await model.run(model.work, seconds)  # type: ignore[attr-defined]
        await asyncio.sleep(tail)  # work after the model is released, before the response goes out
        return {"done": done}

    app.add_api_route("/slow", slow, methods=["POST"])
    return app, manager


def test_shutdown_finishes_running_requests_refuses_new_ones_and_unloads(tmp_path: Path) -> None:
    app, manager = slow_app(tmp_path, shutdown_timeout=20)
    client = TestClient(app, raise_server_exceptions=False)
    client.__enter__()
    assert client.post("/slow").status_code == 200
    entry = manager.entries()[0]
    request, out = in_background(lambda: client.post("/slow", params={"seconds": 4}))
    assert wait_until(lambda: entry.active == 1)
    closer, _ = in_background(lambda: client.__exit__(None, None, None))
    assert wait_until(lambda: app.state.draining)
    for refused in (client.post("/slow"), client.get("/v1/models"), client.get("/health")):
        assert_envelope(refused, 503, "unavailable")
        assert int(refused.headers["Retry-After"]) >= 1
    request.join(30)
    closer.join(30)
    assert "result" in out, out
    assert out["result"].status_code == 200 and out["result"].json() == {"done": "fake/a"}
    assert manager.entries() == [] and entry.model.closed  # type: ignore[attr-defined]


def test_shutdown_waits_for_responses_still_being_prepared_after_their_model_is_idle(tmp_path: Path) -> None:
    app, manager = slow_app(tmp_path, shutdown_timeout=20)
    client = TestClient(app, raise_server_exceptions=False)
    client.__enter__()
    request, out = in_background(lambda: client.post("/slow", params={"seconds": 0.3, "tail": 1.0}))
    assert wait_until(lambda: bool(manager.entries()) and manager.entries()[0].active == 1)
    entry = manager.entries()[0]
    assert wait_until(lambda: entry.active == 0)  # the model is idle; the response is not sent yet
    client.__exit__(None, None, None)
    request.join(30)
    assert "result" in out, out  # not "This portal is not running": shutdown waited for the response
    assert out["result"].status_code == 200 and out["result"].json() == {"done": "fake/a"}
    assert manager.entries() == [] and entry.model.closed  # type: ignore[attr-defined]


def test_signal_under_uvicorn_drains_then_exits(tmp_path: Path) -> None:
    """A signal refuses new work at once (503 or a closed listener, never a 200), the running request
    completes, then the lifespan unloads every model."""
    app, manager = slow_app(tmp_path, shutdown_timeout=20)
    server, runner, url = start_uvicorn(app)
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.post("/slow").status_code == 200
        entry = manager.entries()[0]
        request, out = in_background(lambda: httpx.post(url + "/slow", params={"seconds": 1.5}, timeout=30))
        assert wait_until(lambda: entry.active == 1)
        server.handle_exit(signal.SIGTERM, None)
        assert app.state.draining
        try:
            late = http.get("/v1/models")  # kept-alive connection, or a new one while the listener closes
            assert_envelope(late, 503, "unavailable")
        except httpx.TransportError:
            pass  # the listener is already closed: refused, never served
    request.join(20)
    runner.join(20)
    assert not runner.is_alive()
    assert out["result"].status_code == 200
    assert manager.entries() == [] and entry.model.closed  # type: ignore[attr-defined]
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "/health", timeout=2)


def test_shutdown_waits_no_longer_than_shutdown_timeout(tmp_path: Path) -> None:
    app, manager = slow_app(tmp_path, shutdown_timeout=0.5)
    server, runner, url = start_uvicorn(app)
    assert httpx.post(url + "/slow", timeout=10).status_code == 200
    entry = manager.entries()[0]
    request, out = in_background(lambda: httpx.post(url + "/slow", params={"seconds": 4}, timeout=10))
    assert wait_until(lambda: entry.active == 1)
    started = time.perf_counter()
    server.handle_exit(signal.SIGTERM, None)
    runner.join(10)
    assert not runner.is_alive() and time.perf_counter() - started < 3.0
    assert manager.entries() == [] and entry.model.closed  # type: ignore[attr-defined]
    request.join(10)
    assert "error" in out or out["result"].status_code >= 500  # cut short, answered or not, never hung


def test_an_idle_keep_alive_connection_outlives_the_clients_own_expiry(app_factory: Any) -> None:
    """httpx (and so the OpenAI SDKs) drops idle pooled connections after 5 s; the server must keep them longer,
    or a request sent just as the server closes one fails with a ReadError."""
    import http.client

    app = app_factory()
    assert app.state.settings.keep_alive_timeout > httpx.Limits().keepalive_expiry  # 5 s
    server, runner, url = start_uvicorn(app)
    conn = http.client.HTTPConnection("127.0.0.1", app.state.settings.port, timeout=10)
    try:
        conn.request("GET", "/health")
        assert conn.getresponse().read() and conn.sock is not None
        first = conn.sock
        time.sleep(httpx.Limits().keepalive_expiry + 1)  # idle past uvicorn's own 5 s default
        conn.request("GET", "/health")
        response = conn.getresponse()
        assert response.status == 200 and response.read()
        assert conn.sock is first  # the same connection served again: the server kept it open
    finally:
        conn.close()
        server.handle_exit(signal.SIGTERM, None)
        runner.join(20)
