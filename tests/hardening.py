"""Helpers shared by the hardening tests (security, backpressure, observability, faults, fuzz, load)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.harness import Server, free_port

ROOT = Path(__file__).resolve().parents[1]
ENVELOPE_KEYS = {"message", "type", "param", "code"}
LONG = 450  # tokens of a long answer: ~1.5 s for the random tiny LM on one thread, so a request stays in flight
PROMPTS = ("hi", "a", "hello world", "x", "The", "one two three", "ok", "why?", "cat", "1 2 3 4")


def chat_body(model: Path | str, max_tokens: int, content: str = "Say hello", **extra: Any) -> dict[str, Any]:
    """A greedy chat request with one user message."""
    return {"model": str(model), "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0, **extra}


@pytest.fixture(scope="session", name="long_prompt")
def long_prompt_fixture(tiny_lm: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A user message the random tiny LM answers greedily for LONG tokens, streaming visible text all along.

    The random model's answers depend on its tokenizer, whose BPE training is not byte-for-byte stable across
    runs, so the prompt is chosen here rather than fixed."""
    from fastapi.testclient import TestClient

    from server import create_app
    from tests.conftest import make_settings

    with TestClient(create_app(make_settings(tmp_path_factory.mktemp("long-prompt")))) as c:
        for prompt in PROMPTS:
            body = chat_body(tiny_lm.random_path, LONG, prompt, stream=True, stream_options={"include_usage": True})
            frames = [json.loads(line[6:]) for line in c.post("/v1/chat/completions", json=body).text.splitlines()
                      if line.startswith("data: {")]
            content = [f for f in frames if f["choices"] and f["choices"][0]["delta"].get("content")]
            if frames[-1]["usage"]["completion_tokens"] == LONG and len(content) >= LONG // 3:
                return prompt  # long, and streamed a frame every few tokens (not held back as partial bytes)
    raise AssertionError("no prompt makes the random tiny LM answer at length")


def assert_envelope(response: Any, status: int, code: str | None = None, param: str | None = None) -> dict:
    """The response is an API.md error envelope with this status (and code / param when given)."""
    assert response.status_code == status, response.text[:500]
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    assert set(body["error"]) == ENVELOPE_KEYS, body
    assert body["detail"] == body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    if param is not None:
        assert body["error"]["param"] == param, body
    assert "Traceback" not in body["detail"]
    return body


def is_envelope(body: Any) -> bool:
    """True when `body` (parsed JSON) is the API.md error envelope."""
    return (isinstance(body, dict) and set(body) == {"error", "detail"} and isinstance(body["error"], dict)
            and set(body["error"]) == ENVELOPE_KEYS and isinstance(body["error"]["message"], str)
            and body["detail"] == body["error"]["message"])


def iter_routes(app: Any) -> list[tuple[str, str]]:
    """(method, path) of every route registered on a FastAPI app, included routers flattened."""

    def walk(routes: list[Any]) -> Iterator[Any]:
        for route in routes:
            if hasattr(route, "original_router"):  # FastAPI's wrapper around an included router
                yield from walk(route.original_router.routes)
            elif hasattr(route, "routes") and not hasattr(route, "methods"):
                yield from walk(route.routes)
            else:
                yield route

    found = []
    for route in walk(list(app.routes)):
        for method in sorted(getattr(route, "methods", None) or []):
            found.append((method, route.path))
    return found


def fill_path(path: str) -> str:
    """A concrete URL for a route template: every `{param}` (or `{param:path}`) becomes `x`."""
    out, depth = [], 0
    for ch in path:
        if ch == "{":
            depth += 1
            if depth == 1:
                out.append("x")
        elif ch == "}":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out)


def metric(text: str, name: str, **labels: str) -> float | None:
    """Value of one sample (exact name, labels a subset) in Prometheus text; None when absent."""
    from prometheus_client.parser import text_string_to_metric_families

    total = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total = (total or 0.0) + sample.value
    return total


def server_env(**settings: Any) -> dict[str, str]:
    """The environment of a server subprocess: offline, one thread, UNIVERSAL_RUNTIME_* from `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNIVERSAL_RUNTIME_")}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                "UNIVERSAL_RUNTIME_TORCH_THREADS": "1"})
    env.update({f"UNIVERSAL_RUNTIME_{k.upper()}": str(v) for k, v in settings.items()})
    return env


@contextmanager
def server_process(log_dir: Path, *args: str, health_timeout: float = 60.0, **settings: Any) -> Iterator[Server]:
    """`python server.py --port <free> <args>` with `settings` as environment; stopped (SIGTERM) at the end."""
    cmd = [sys.executable, str(ROOT / "server.py"), "--port", str(free_port()), *args]
    log_dir.mkdir(parents=True, exist_ok=True)
    srv = Server(cmd, server_env(**settings), log_dir / f"server-{time.monotonic_ns()}.log", health_timeout)
    try:
        srv.start()
        yield srv
    finally:
        srv.stop(timeout=30)


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.01) -> bool:
    """Poll `predicate()` until it is true or `timeout` seconds pass; returns its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def corrupt_copy(source: Path, dest: Path) -> Path:
    """A copy of a saved model folder whose safetensors weights are truncated to half (config intact)."""
    shutil.copytree(source, dest)
    for weights in dest.glob("*.safetensors"):
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    return dest


def get_json(url: str, **kw: Any) -> Any:
    """GET a URL on a real server and parse its JSON."""
    return httpx.get(url, timeout=30, **kw).json()


def in_background(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Run fn() on a daemon thread; its result (or exception) lands in the returned dict."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def start_uvicorn(app: Any) -> tuple[Any, threading.Thread, str]:
    """The uvicorn server object main() runs (server.build_server), serving `app` on a free loopback port from a
    thread; stop it with `server.handle_exit(signal.SIGTERM, None)` and join the thread."""
    from server import build_server

    settings = app.state.settings
    settings.port = free_port()
    server = build_server(app, settings)
    runner, _ = in_background(lambda: asyncio.run(server.serve()))
    assert wait_until(lambda: server.started, timeout=20)
    return server, runner, f"http://127.0.0.1:{settings.port}"
