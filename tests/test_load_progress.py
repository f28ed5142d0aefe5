"""Load progress: stages in the log, and `POST /v1/models/load` with `stream: true` as SSE."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from core.contract import BaseModel, LoadContext
from core.manager import ModelManager
from core.resolve import ModelSpec
from routers.meta import _load_events
from tests.conftest import make_settings
from tests.fakes import FakeLoader, FakeModel, FakeResolver, FakeSpec


class SteppingLoader(FakeLoader):
    """A slow loader that reports its own stages through `ctx.progress`, like a real one."""

    def __init__(self, pause: float = 0.15, **kw: Any) -> None:
        super().__init__(**kw)
        self.pause = pause
        self.gate: threading.Event | None = None

    def __call__(self, category: str):  # noqa: ANN204 - mimics core.registry.get_loader
        inner = super().__call__(category)

        def load(spec: ModelSpec, ctx: LoadContext) -> BaseModel:
            ctx.progress("reading config")
            if self.gate is not None:
                self.gate.wait(5)
            time.sleep(self.pause)
            ctx.progress("weights 2/2")
            return inner(spec, ctx)

        return load


def parse_sse(text: str) -> list[Any]:
    frames = [block for block in text.split("\n\n") if block.strip()]
    out: list[Any] = []
    for frame in frames:
        assert frame.startswith("data: "), frame
        payload = frame[len("data: "):]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def manager_with(tmp_path: Path, loader: FakeLoader, resolver: Any = None) -> ModelManager:
    return ModelManager(make_settings(tmp_path), resolver or FakeResolver(), loader=loader)


def test_stream_sends_loading_events_then_ready_then_done(tmp_path: Path, client_factory) -> None:  # noqa: ANN001
    client: TestClient = client_factory(manager=manager_with(tmp_path, SteppingLoader()))
    response = client.post("/v1/models/load", json={"model": "fake/slow", "type": "encoder", "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    frames = parse_sse(response.text)
    assert frames[-1] == "[DONE]"
    ready = frames[-2]
    assert ready["status"] == "ready" and ready["elapsed"] >= 0.15
    assert ready["model"]["id"] == "fake/slow" and ready["model"]["status"] == "loaded"
    assert ready["model"]["type"] == "encoder" and ready["model"]["memory_bytes"] == 1000
    loading = frames[:-2]
    assert all(f["status"] == "loading" and set(f) == {"status", "message", "elapsed"} for f in loading)
    assert [f["message"] for f in loading] == ["loading encoder model", "loading weights on cpu (fp32)",
                                               "reading config", "weights 2/2"]
    elapsed = [f["elapsed"] for f in loading]
    assert elapsed == sorted(elapsed) and elapsed[-1] - elapsed[-2] >= 0.14
    assert client.get("/v1/models/fake%2Fslow").json()["status"] == "loaded"


def test_stream_of_a_loaded_model_is_just_ready(tmp_path: Path, client_factory) -> None:  # noqa: ANN001
    client: TestClient = client_factory(manager=manager_with(tmp_path, SteppingLoader(pause=0)))
    assert client.post("/v1/models/load", json={"model": "fake/a", "type": "encoder"}).status_code == 200
    frames = parse_sse(client.post("/v1/models/load",
                                   json={"model": "fake/a", "type": "encoder", "stream": True}).text)
    assert [f if f == "[DONE]" else f["status"] for f in frames] == ["ready", "[DONE]"]


def test_load_failure_becomes_an_error_frame(tmp_path: Path, client_factory) -> None:  # noqa: ANN001
    loader = FakeLoader(failures={"fake/broken": 1})
    client: TestClient = client_factory(manager=manager_with(tmp_path, loader))
    response = client.post("/v1/models/load", json={"model": "fake/broken", "type": "encoder", "stream": True})
    assert response.status_code == 200
    frames = parse_sse(response.text)
    assert frames[-1] == "[DONE]"
    error = frames[-2]
    assert set(error) == {"error"}
    assert error["error"]["type"] == "server_error" and error["error"]["code"] == "model_load_failed"
    assert "corrupt weights in fake/broken" in error["error"]["message"]
    assert frames[0]["status"] == "loading"
    assert not any(isinstance(f, dict) and f.get("status") == "ready" for f in frames)
    # Not loaded; a later (non-streaming) try loads it.
    assert client.post("/v1/models/load", json={"model": "fake/broken", "type": "encoder"}).status_code == 200


def test_errors_before_the_stream_starts_keep_their_status(tmp_path: Path, client_factory) -> None:  # noqa: ANN001
    client: TestClient = client_factory(manager=manager_with(tmp_path, FakeLoader()))
    response = client.post("/v1/models/load", json={"model": "nobody/nothing", "type": "encoder", "stream": True})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_frames_are_produced_as_the_load_progresses() -> None:
    """The generator yields each stage when it happens, not all at the end (keep-alive when quiet)."""
    gate = threading.Event()
    marks: list[str] = []

    async def run(listener) -> dict[str, Any]:  # noqa: ANN001
        listener("first", 0.0)
        await asyncio.to_thread(gate.wait, 5)
        listener("second", 0.1)
        return {"id": "m"}

    async def consume() -> list[str]:
        frames: list[str] = []
        async for frame in _load_events(run, "req-1", keepalive=0.05):
            frames.append(frame)
            marks.append("gate-open" if gate.is_set() else "gate-closed")
            if frame.startswith(": keep-alive"):
                gate.set()
        return frames

    frames = asyncio.run(consume())
    assert json.loads(frames[0][6:]) == {"status": "loading", "message": "first", "elapsed": 0.0}
    assert marks[0] == "gate-closed"  # seen while the load was still blocked
    assert frames[1] == ": keep-alive\n\n"
    assert json.loads(frames[2][6:])["message"] == "second"
    assert json.loads(frames[3][6:])["status"] == "ready" and frames[4] == "data: [DONE]\n\n"


def test_a_listener_joining_a_load_under_way_hears_the_rest(tmp_path: Path) -> None:
    loader = SteppingLoader(pause=0)
    loader.gate = threading.Event()
    manager = manager_with(tmp_path, loader)
    heard: dict[str, list[str]] = {"first": [], "second": []}

    async def scenario() -> None:
        first = asyncio.ensure_future(manager.load("fake/shared", "encoder",
                                                   progress=lambda m, e: heard["first"].append(m)))
        while "reading config" not in heard["first"]:
            await asyncio.sleep(0.01)
        second = asyncio.ensure_future(manager.load("fake/shared", "encoder",
                                                    progress=lambda m, e: heard["second"].append(m)))
        await asyncio.sleep(0.05)
        loader.gate.set()
        assert (await first) is (await second)

    asyncio.run(scenario())
    assert loader.loads == {"fake/shared": 1}
    assert heard["first"][-1] == heard["second"][-1] == "weights 2/2"
    assert heard["second"] == ["weights 2/2"]
    assert manager._listeners == {}  # listeners are dropped once their load returns


class HubSpec(FakeSpec):
    """A spec whose files must be 'downloaded' (materialize fakes the download)."""

    def materialize(self, token: str | None = None) -> ModelSpec:
        return replace(self, path=Path("/downloaded"), hub_id=self.hub_id)


class StageResolver(FakeResolver):
    def resolve(self, model: str | None, category: str, capability: str | None = None) -> ModelSpec:
        spec = super().resolve(model, category, capability)
        if model == "fake/hub":
            spec = HubSpec(requested=spec.requested, key=spec.key, category=category, hub_id="org/hub")
        elif model == "fake/gguf":
            spec.path, spec.gguf_file = Path("/models"), "tiny-Q4_K_M.gguf"
        return spec


@pytest.mark.parametrize(("model", "stages"), [
    ("fake/hub", ["loading encoder model", "downloading org/hub", "downloaded org/hub",
                  "loading weights on cpu (fp32)"]),
    ("fake/gguf", ["loading encoder model", "loading weights from GGUF tiny-Q4_K_M.gguf"]),
])
def test_stages_are_logged_with_elapsed_seconds(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                model: str, stages: list[str]) -> None:
    manager = manager_with(tmp_path, FakeLoader(), StageResolver())
    with caplog.at_level(logging.INFO, logger="universal_runtime.manager"):
        entry = asyncio.run(manager.load(model, "encoder"))
    assert isinstance(entry.model, FakeModel)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"[{model}]")]
    assert [line.removeprefix(f"[{model}] ").rsplit(" (", 1)[0] for line in lines] == stages
    assert all(line.endswith("s)") for line in lines)
    assert any(r.getMessage().startswith(f"loaded {model}") for r in caplog.records)


def test_load_thread_logs_carry_the_request_id(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from core.logs import RequestIdFilter, request_id_var

    manager = manager_with(tmp_path, SteppingLoader(pause=0))

    async def load() -> None:
        request_id_var.set("req-42")
        await manager.load("fake/traced", "encoder")

    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.INFO, logger="universal_runtime.manager"):
        asyncio.run(load())
    stages = [r for r in caplog.records if r.getMessage().startswith("[fake/traced]")]
    assert len(stages) == 4 and {r.request_id for r in stages} == {"req-42"}
