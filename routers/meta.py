"""Meta routes: /health, /metrics and the model list / load / unload of /v1/models."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import unquote

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from core.contract import CATEGORIES
from core.detect import detect_category
from core.entry import Entry
from core.errors import InvalidRequest, ModelNotFound, classify
from core.load_options import Category, RequestOptions
from core.logs import request_id_var
from core.manager import ModelManager
from core.resolve import PACKAGED
from core.version import __version__
from routers.common import OpenAIRequest, manager_of, request_token

router = APIRouter()

PACKAGED_CATEGORIES = {"sentence-transformers/all-MiniLM-L6-v2": "encoder",
                       "HuggingFaceTB/SmolLM2-135M-Instruct": "causal"}
assert {k.lower() for k in PACKAGED_CATEGORIES} == set(PACKAGED)


class ModelItem(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "universal-runtime"
    type: str | None
    status: Literal["loaded", "available"]
    pinned: bool = False
    memory_bytes: int | None = None
    engine: str | None = None  # chat models: "llama.cpp" or "transformers"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelItem]


class LoadRequest(OpenAIRequest):
    model: str = Field(min_length=1)
    type: Category | None = None
    pin: bool = False
    stream: bool = False
    options: RequestOptions | None = None  # engine, context_size, dtype, ... (docs/configuration.md)


class UnloadRequest(OpenAIRequest):
    model: str = Field(min_length=1)


def _loaded_item(entry: Entry) -> dict[str, Any]:
    item = ModelItem(id=entry.spec.key, created=entry.created, type=entry.spec.category, status="loaded",
                     pinned=entry.pinned, memory_bytes=entry.bytes).model_dump()
    item.update(entry.model.describe())
    return item


def _available(manager: ModelManager) -> list[dict[str, Any]]:
    now = int(time.time())
    items: list[dict[str, Any]] = []
    settings = manager.settings
    items.append(ModelItem(id="default", created=now, type="causal", status="available").model_dump())
    for alias, opts in manager.resolver.aliases.items():
        items.append(ModelItem(id=alias, created=now, type=opts.type, status="available",
                               pinned=opts.pin).model_dump())
    for model_id in settings.preload:
        category, _, name = model_id.rpartition(":") if model_id.split(":")[0] in CATEGORIES else ("", "", model_id)
        items.append(ModelItem(id=name, created=now, type=category or None, status="available").model_dump())
    for model_id, category in PACKAGED_CATEGORIES.items():
        items.append(ModelItem(id=model_id, created=now, type=category, status="available").model_dump())
    return items


def list_models(manager: ModelManager) -> list[dict[str, Any]]:
    """Loaded models first, then aliases, preloads and packaged defaults not loaded (deduplicated by id)."""
    seen: dict[str, dict[str, Any]] = {}
    for entry in manager.entries():
        seen.setdefault(entry.spec.key, _loaded_item(entry))
        if entry.spec.requested not in seen:
            seen[entry.spec.requested] = {**_loaded_item(entry), "id": entry.spec.requested}
    for item in _available(manager):
        seen.setdefault(item["id"], item)
    return list(seen.values())


async def _llama_cpp() -> dict[str, Any]:
    """Whether GGUF chat models can run in llama.cpp (asked once: the first call imports the binding)."""
    from models.language import llama_cpp_missing

    missing = await asyncio.to_thread(llama_cpp_missing)
    return {"available": missing is None, **({"reason": missing} if missing else {})}


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    """Liveness and device facts; cheap, answers while models load and generate."""
    manager = manager_of(request)
    probe = request.app.state.device_info
    if probe.done() and probe.exception() is None:
        device = {**probe.result(), "memory_allocated": await asyncio.to_thread(manager.device.memory_allocated)}
    else:  # torch still importing (or failed): answer from cheap probes rather than wait
        device = manager.device.light_info()
    return {
        "status": "healthy",
        "version": __version__,
        "device": device,
        "loaded_models": list(dict.fromkeys(e.spec.key for e in manager.entries())),
        "engines": {e.spec.key: e.model.describe()["engine"] for e in manager.entries() if e.spec.category == "causal"},
        "llama_cpp": await _llama_cpp(),
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    m = request.app.state.metrics
    return Response(m.render(), media_type=m.content_type)


@router.get("/v1/models", response_model=ModelList)
async def models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": list_models(manager_of(request))}


@router.get("/v1/models/{model_id:path}")
async def model(model_id: str, request: Request) -> dict[str, Any]:
    """One model; ids containing `/` may be sent raw or percent-encoded."""
    manager = manager_of(request)
    wanted = unquote(model_id)
    for item in list_models(manager):
        if item["id"] == wanted:
            return item
    for entry in manager.find(wanted):
        return {**_loaded_item(entry), "id": wanted}
    raise ModelNotFound(f"Model '{wanted}' is not loaded, configured or packaged.")


@router.post("/v1/models/load", response_model=None)
async def load(body: LoadRequest, request: Request) -> dict[str, Any] | StreamingResponse:
    """Load (or find loaded) a model, optionally pinning it; `stream: true` sends progress as SSE."""
    manager = manager_of(request)
    category = body.type
    if category is None or body.stream:  # a stream resolves first, so 403/404 keep their status
        spec = await asyncio.to_thread(manager.resolver.resolve, body.model, category or "causal")
        category = category or detect_category(spec)  # type: ignore[assignment]
        if category is None:
            raise InvalidRequest(f"Cannot tell the type of model '{body.model}'; pass 'type' "
                                 f"(one of {', '.join(CATEGORIES)}).", param="type")

    async def run(progress: Callable[[str, float], None] | None = None) -> dict[str, Any]:
        entry = await manager.load(body.model, category, pin=body.pin, token=request_token(request, body),
                                   progress=progress, options=body.options)
        return {**_loaded_item(entry), "id": entry.spec.key}

    if not body.stream:
        return await run()
    return StreamingResponse(_load_events(run, request_id_var.get()), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data)}\n\n"


async def _load_events(run: Callable[..., Any], request_id: str, keepalive: float = 15.0) -> AsyncIterator[str]:
    """SSE frames of one load: `loading` events as it progresses, then `ready` (or an error), then [DONE]."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    started = time.perf_counter()

    def listener(message: str, elapsed: float) -> None:
        event = {"status": "loading", "message": message, "elapsed": round(elapsed, 2)}
        loop.call_soon_threadsafe(queue.put_nowait, event)

    task = asyncio.ensure_future(run(listener))
    task.add_done_callback(lambda _: loop.call_soon(queue.put_nowait, None))
    try:
        while (event := await _next(queue, keepalive)) is not None:
            yield _sse(event) if event else ": keep-alive\n\n"
        try:
            item = task.result()
            yield _sse({"status": "ready", "model": item, "elapsed": round(time.perf_counter() - started, 2)})
        except Exception as exc:  # noqa: BLE001 - the stream has started: the error becomes a frame
            yield _sse({"error": classify(exc, request_id)[1]["error"]})
        yield "data: [DONE]\n\n"
    finally:
        task.cancel()  # the load itself goes on (it is shared); only this waiter stops


async def _next(queue: asyncio.Queue[dict[str, Any] | None], timeout: float) -> dict[str, Any] | None:
    """The next event, or {} after `timeout` seconds of silence (sent as a keep-alive comment)."""
    try:
        return await asyncio.wait_for(queue.get(), timeout)
    except TimeoutError:
        return {}


@router.post("/v1/models/unload")
async def unload(body: UnloadRequest, request: Request) -> dict[str, Any]:
    """Unload a model once no request uses it (pinned ones too); 404 if it is not loaded."""
    entries = await manager_of(request).unload(body.model)
    entry = entries[0]
    return ModelItem(id=entry.spec.key, created=int(time.time()), type=entry.spec.category, status="available",
                     pinned=False, memory_bytes=None).model_dump()
