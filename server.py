"""Universal Runtime server: `create_app()` builds the FastAPI app; `main()` parses flags and runs uvicorn.

Heavy libraries (torch, transformers, diffusers, sentence-transformers) are not imported here: each
category imports its own on first use.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import ipaddress
import logging
import math
import os
import sys
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from core.contract import CATEGORIES
from core.errors import APIError, classify
from core.logs import configure_logging, request_id_var
from core.manager import ModelManager
from core.metrics import Metrics
from core.middleware import EnvelopeCORSMiddleware, InFlight, RuntimeMiddleware
from core.resolve import Resolver
from core.settings import Settings
from core.version import __version__

logger = logging.getLogger("universal_runtime")

ROUTERS = ("meta", "chat", "responses", "embeddings", "images", "vision", "audio", "speech", "multimodal")


def _model_aliases(settings: Settings) -> dict[str, Any]:
    if not settings.config:
        return {}
    from core.model_config import load_model_config

    return load_model_config(settings.config)


def _preloads(settings: Settings, aliases: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(model, category or None) pairs to load at start-up: settings.preload and config entries."""
    items: list[tuple[str, str | None]] = []
    for raw in settings.preload:
        category, sep, name = raw.partition(":")
        if sep and category in CATEGORIES:
            items.append((name, category))
        else:
            items.append((raw, None))
    items += [(alias, opts.type) for alias, opts in aliases.items() if opts.preload]
    return items


async def _preload(app: FastAPI, items: list[tuple[str, str | None]]) -> None:
    from routers.meta import LoadRequest, load

    for model, category in items:
        try:
            scope = {"type": "http", "headers": [], "app": app}
            await load(LoadRequest(model=model, type=category), Request(scope))
        except Exception as exc:  # noqa: BLE001 - a failed preload must not stop the server
            logger.error("preload of %s failed: %s", model, exc)


async def _sweeper(manager: ModelManager) -> None:
    interval = max(1.0, min(30.0, manager.settings.idle_ttl_seconds / 4 or 30.0))
    while True:
        await asyncio.sleep(interval)
        with contextlib.suppress(Exception):
            await manager.sweep()


async def _probe_device(app: FastAPI) -> None:
    """Import torch and read the real device facts a moment after start-up, so /health is fast from the first
    request (until then it answers from cheap probes)."""
    await asyncio.sleep(0.5)
    future: Future[dict[str, Any]] = app.state.device_info
    try:
        future.set_result(await asyncio.to_thread(app.state.manager.device.info))
    except Exception as exc:  # noqa: BLE001
        future.set_exception(exc)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    manager: ModelManager = app.state.manager
    tasks = [asyncio.create_task(_sweeper(manager)), asyncio.create_task(_probe_device(app))]
    preloads = _preloads(settings, manager.resolver.aliases)
    if preloads:
        tasks.append(asyncio.create_task(_preload(app, preloads)))
    try:
        yield
    finally:
        app.state.draining = True  # refuse new requests (503) while running ones finish and models unload
        for task in tasks:
            task.cancel()
        started = time.monotonic()
        # Running requests finish and their responses go out (a model is idle before its response is sent).
        await app.state.inflight.wait_idle(settings.shutdown_timeout)
        await manager.close(timeout=max(0.0, settings.shutdown_timeout - (time.monotonic() - started)))


def _add_error_handlers(app: FastAPI) -> None:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        status, body, headers = classify(exc, request_id_var.get())
        return JSONResponse(body, status_code=status, headers=headers)

    for exc_type in (APIError, RequestValidationError, HTTPException):
        app.add_exception_handler(exc_type, handle)


def create_app(settings: Settings | None = None, manager: ModelManager | None = None) -> FastAPI:
    """Build the app. Tests inject settings and a manager (with fake or tiny models)."""
    settings = settings or Settings()
    metrics = manager.metrics if manager is not None and manager.metrics is not None else Metrics()
    if manager is None:
        manager = ModelManager(settings, Resolver(settings, _model_aliases(settings)), metrics=metrics)
    elif manager.metrics is None:
        manager.metrics = metrics
    app = FastAPI(title="Universal Runtime", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible server for any Hugging Face model, run locally.")
    app.state.settings = settings
    app.state.manager = manager
    app.state.metrics = metrics
    app.state.device_info = Future()  # filled off the request path once the server is up (needs torch)
    app.state.draining = False  # set when shutdown starts; the middleware then answers 503 `unavailable`
    app.state.inflight = InFlight()
    _add_error_handlers(app)
    for name in ROUTERS:
        app.include_router(importlib.import_module(f"routers.{name}").router)
    app.add_middleware(RuntimeMiddleware, settings=settings, metrics=metrics, inflight=app.state.inflight)
    if settings.cors_origins:
        app.add_middleware(EnvelopeCORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["X-Request-ID", "X-Ignored-Params"])
    return app


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags; each overrides the UNIVERSAL_RUNTIME_* variable of the same name."""
    p = argparse.ArgumentParser(prog="server.py", description="Universal Runtime: OpenAI-compatible server "
                                "for any Hugging Face model. Flags override UNIVERSAL_RUNTIME_* variables.")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 11540)")
    p.add_argument("--device", choices=["auto", "cuda", "mps", "cpu"], help="compute device")
    p.add_argument("--dtype", choices=["auto", "fp32", "fp16", "bf16"], help="weights dtype")
    p.add_argument("--preload", action="append", help="model to load at start (repeatable; category:model)")
    p.add_argument("--pin", action="append", dest="pinned", help="model never evicted (repeatable)")
    p.add_argument("--config", help="model config YAML (aliases, per-model options) or llamafarm.yaml")
    p.add_argument("--max-loaded-models", type=int, help="most models loaded at once")
    p.add_argument("--memory-budget", help="bytes or percent of device memory for models")
    p.add_argument("--idle-ttl", type=float, dest="idle_ttl_seconds", help="seconds before an idle model unloads")
    p.add_argument("--output-dir", help="where generated images are written")
    p.add_argument("--media-dir", action="append", dest="media_dirs", help="directory media paths may use")
    p.add_argument("--api-key", help="require this Bearer key")
    p.add_argument("--cors-origin", action="append", dest="cors_origins", help="allowed CORS origin")
    p.add_argument("--max-body-mb", type=float, help="largest request body in MiB")
    p.add_argument("--torch-threads", type=int, help="torch threads (0 = auto)")
    p.add_argument("--log-level", help="debug|info|warning|error")
    p.add_argument("--log-format", choices=["text", "json"], help="log line format")
    p.add_argument("--insecure", action="store_true", default=None,
                   help="allow a non-loopback bind without an API key")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    return Settings(**overrides)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = settings_from_args(args)
    configure_logging(settings.log_level, settings.log_format)
    if not _is_loopback(settings.host) and not settings.api_key and not settings.insecure:
        sys.exit(f"Refusing to listen on {settings.host} without an API key: set UNIVERSAL_RUNTIME_API_KEY "
                 "(or --api-key), or pass --insecure.")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from core.model_config import ModelConfigError

    try:
        app = create_app(settings)
    except ModelConfigError as exc:  # a bad --config file: one line naming the key and line, then exit
        sys.exit(str(exc))
    serve(app, settings)


def build_server(app: FastAPI, settings: Settings) -> Any:
    """The uvicorn server of `app`: on SIGTERM / SIGINT new requests get 503 `unavailable` at once, running
    ones get up to `shutdown_timeout` seconds to finish, then every model is unloaded (lifespan)."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            app.state.draining = True
            super().handle_exit(sig, frame)

    # The keep-alive timeout outlasts the clients': with uvicorn's 5 s default equal to httpx's 5 s expiry, a
    # request sent on a pooled connection just as the server closes it fails with a ReadError (seen once in
    # 2000 requests of the load bench).
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None,
                            timeout_keep_alive=int(math.ceil(settings.keep_alive_timeout)),
                            timeout_graceful_shutdown=settings.shutdown_timeout)  # type: ignore[arg-type]
    return DrainingServer(config)


def serve(app: FastAPI, settings: Settings) -> None:
    """Run the app under uvicorn until a signal stops it (see build_server)."""
    build_server(app, settings).run()


if __name__ == "__main__":
    main()
