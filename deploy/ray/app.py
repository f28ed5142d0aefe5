"""Universal Runtime as a Ray Serve application: the same FastAPI app on many replicas, model-affinity routing.

Two deployments:

- `UniversalRuntime` (the model replicas): each replica builds the very app of `server.create_app()` (through
  `@serve.ingress`, built on the replica) with its own `ModelManager`, so every route, error envelope, header
  and stream is the single server's own code, and the byte budget, LRU, pinning, idle TTL and the encoders'
  dynamic batching hold per replica, unchanged. `@serve.multiplexed` registers each model id a replica is
  asked for; Serve's router reads that registry to send a request for a model to a replica that has it.
- `Gateway` (ingress, deploy/ray/gateway.py): a light pass-through that reads the request's model (header
  `serve_multiplexed_model_id`, JSON `model`, multipart `model`) and forwards the raw request to
  `UniversalRuntime.forward` with that `multiplexed_model_id`; answers 503 `unavailable` when the replica
  is lost before answering.

Why not a multiplexed "models" deployment behind a router-only ingress (one remote call per model operation)?
Routers work on live model objects (tokenizers, streaming generators, batch queues); putting them behind a
second deployment would need a remote protocol per category, a second implementation of every endpoint. Here
a runtime replica is exactly one single-process server, and the gateway only moves bytes.

Why a gateway at all? Serve's proxy routes on the `serve_multiplexed_model_id` header before reading the body,
so without it OpenAI clients (which put the model in the body) would be spread at random; and a replica lost
mid-request would surface as the proxy's plain-text 500. `build({"gateway": False})` deploys the runtime as
the ingress itself (one hop less; affinity only for clients sending the header).

The multiplexed registry is a routing hint only: the manager still decides what stays loaded. A model the
manager evicted (budget, idle TTL) keeps its registration (up to `UNIVERSAL_RUNTIME_RAY_MAX_MODELS` ids per
replica), so the next request for it comes back to the same replica, which loads it again. The id is the
model name as requested (an alias and its target are two ids).

Every response carries `X-Serve-Replica` (the replica's actor name); that replica's `/metrics`
(`universal_runtime_model_loads_total`) and `/health` (`loaded_models`) tell what it loaded.

Use it with `serve run deploy/ray/serve.yaml` (see docs/scaling.md) or from Python: `serve.run(build({...}))`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from ray import serve
from ray.serve import Application
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deploy.ray.local import bind_replica_grpc_to_loopback

MODEL_HEADER = b"serve_multiplexed_model_id"
REPLICA_HEADER = b"x-serve-replica"


@serve.multiplexed(max_num_models_per_replica=int(os.environ.get("UNIVERSAL_RUNTIME_RAY_MAX_MODELS", "-1")))
async def _register(model_id: str) -> str:
    """Record that this replica serves `model_id` (Serve pushes the list to its router). Loading itself is
    lazy and stays with the replica's ModelManager."""
    return model_id


def replica_name() -> str:
    """This replica's Ray actor name ("SERVE_REPLICA::app#deployment#id"), or the process id outside Ray."""
    import ray

    try:
        return ray.get_runtime_context().get_actor_name() or f"pid-{os.getpid()}"
    except Exception:  # noqa: BLE001 - not inside an actor
        return f"pid-{os.getpid()}"


class ReplicaAffinity:
    """ASGI middleware: registers the request's `serve_multiplexed_model_id` with Serve's multiplexer and
    tags every response with the `X-Serve-Replica` header."""

    def __init__(self, app: ASGIApp, replica: str) -> None:
        self.app = app
        self.replica = replica.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        model_id = next((v.decode() for k, v in scope.get("headers", []) if k.lower() == MODEL_HEADER), "")
        if model_id:
            await _register(model_id)

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (REPLICA_HEADER, self.replica)]}
            await send(message)

        await self.app(scope, receive, tagged)


class _Replica:
    """What both runtime deployments share: the single server's app, built on the replica, and `forward`."""

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        bind_replica_grpc_to_loopback()
        self.settings_overrides = dict(settings or {})
        self.runtime_app: ASGIApp | None = None

    def _build_app(self) -> Any:
        from core.logs import configure_logging
        from core.settings import Settings
        from server import create_app

        settings = Settings(**self.settings_overrides)
        configure_logging(settings.log_level, settings.log_format)
        app = create_app(settings)
        app.add_middleware(ReplicaAffinity, replica=replica_name())
        self.runtime_app = app
        return app

    async def forward(self, scope: dict[str, Any], body: bytes) -> AsyncIterator[Message]:
        """Run one HTTP request (from the gateway) through this replica's app; yield its ASGI messages as they
        are sent. Cancelled (client gone) -> the app's task is cancelled, so streams release their model."""
        model_id = serve.get_multiplexed_model_id()
        if model_id:
            await _register(model_id)
        assert self.runtime_app is not None
        queue: asyncio.Queue[Message | None] = asyncio.Queue()
        delivered = False

        async def receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # the client's disconnect reaches us as a cancellation
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            await queue.put(message)

        async def run() -> None:
            try:
                await self.runtime_app(scope, receive, send)  # type: ignore[misc]
            finally:
                await queue.put(None)

        task = asyncio.create_task(run())
        try:
            while (message := await queue.get()) is not None:
                yield message
            await task
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def forward_whole(self, scope: dict[str, Any], body: bytes) -> list[Message]:
        """`forward` for a request that does not stream: every ASGI message of the answer in one reply (one
        remote round trip instead of one per message, which is most of Serve's added latency)."""
        return [message async for message in self.forward(scope, body)]


class UniversalRuntime(_Replica):
    """A runtime replica behind the gateway: the single server's app with its own ModelManager, its lifespan
    (sweeper, preloads; drain and unload at shutdown) run by the replica itself.

    `settings` overrides the replica's `Settings` (which otherwise come from the `UNIVERSAL_RUNTIME_*`
    variables of the replica's environment, e.g. `runtime_env.env_vars` in serve.yaml)."""

    async def __init__(self, settings: dict[str, Any] | None = None) -> None:  # type: ignore[misc]
        super().__init__(settings)
        app = self._build_app()
        self._lifespan = app.router.lifespan_context(app)
        await self._lifespan.__aenter__()

    async def __del__(self) -> None:
        """Serve calls this on graceful shutdown: running requests finish, then every model unloads."""
        lifespan, self._lifespan = getattr(self, "_lifespan", None), None
        if lifespan is not None:
            await lifespan.__aexit__(None, None, None)


@serve.ingress()
class UniversalRuntimeIngress(_Replica):
    """The runtime replica as the ingress itself (`gateway: false`): Serve's proxy runs the app directly;
    affinity only for clients that send the `serve_multiplexed_model_id` header."""

    def __serve_build_asgi_app__(self) -> ASGIApp:
        """Called by Serve on the replica after `__init__`: the app of `server.create_app`."""
        return self._build_app()


def build(args: dict[str, Any] | None = None) -> Application:
    """Serve application builder (`import_path: deploy.ray.app:build` in serve.yaml, or `serve.run(build())`).

    `args`: `settings` (dict of Settings overrides for every runtime replica), `gateway` (default true; false
    deploys the runtime as the ingress), `gateway_replicas` (default 1), and any `@serve.deployment` option of
    the runtime (`num_replicas`, `autoscaling_config`, `ray_actor_options`, `max_ongoing_requests`, ...).
    Options in serve.yaml's `deployments:` section take precedence over these, as Serve applies them last."""
    args = dict(args or {})
    settings = args.pop("settings", None)
    use_gateway = bool(args.pop("gateway", True))
    gateway_replicas = int(args.pop("gateway_replicas", 1))
    options: dict[str, Any] = {"max_ongoing_requests": 64, "graceful_shutdown_timeout_s": 30, **args}
    if "autoscaling_config" not in options:
        options.setdefault("num_replicas", 1)
    cls = UniversalRuntime if use_gateway else UniversalRuntimeIngress
    runtime = serve.deployment(name="UniversalRuntime")(cls).options(**options).bind(settings)
    if not use_gateway:
        return runtime
    from deploy.ray.gateway import Gateway

    gateway = serve.deployment(name="Gateway")(Gateway)
    return gateway.options(num_replicas=gateway_replicas, max_ongoing_requests=1000,
                           ray_actor_options={"num_cpus": 0.1}).bind(runtime)


app = build  # `serve run deploy.ray.app:app` also works (Serve calls a builder with the CLI's args)
