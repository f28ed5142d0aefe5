"""Ray Serve: two models on 2 replicas vs one single-process server holding both under a tight budget.

Work: embeddings requests alternating between MiniLM and a small BERT encoder (random weights), sequential.
Baseline: the single server with `UNIVERSAL_RUNTIME_MAX_LOADED_MODELS=1`, so every switch evicts and reloads.
Ours: the Ray Serve app of deploy/ray/app.py on a local, loopback-only Ray cluster, 2 replicas with the same
capacity of 1 model each; the gateway routes each model to its replica, so nothing is evicted.
Rows: throughput (requests/s, higher is better) with the evictions of each side in the note, and the latency
Serve's proxy and gateway add to a tiny request (one short text on an already-loaded model; target <= 1.3x).
Skipped when `ray` is not installed.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.harness import Harness, Stats, free_port, timed
from bench.tiny import MINILM_ID, build_small_encoder

PHASE = "ray"
HEADER = "serve_multiplexed_model_id"


def _counter(text: str, name: str) -> float:
    found = re.search(rf"^universal_runtime_{name} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def deploy(h: Harness, url: str, gateway: bool = True, replicas: int = 2) -> None:
    """(Re)deploy the app as "bench" on `replicas` replicas and wait for /health."""
    from ray import serve

    from deploy.ray.app import build

    settings = {"max_loaded_models": 1, "torch_threads": h.threads, "idle_ttl_seconds": 0}
    serve.run(build({"num_replicas": replicas, "ray_actor_options": {"num_cpus": 0.5}, "gateway": gateway,
                     "settings": settings}), name="bench", route_prefix="/")
    deadline = time.monotonic() + 120
    while httpx.get(f"{url}/health", timeout=10).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.3)


@contextlib.contextmanager
def ray_app(h: Harness) -> Iterator[str]:
    """A local Ray cluster bound to 127.0.0.1 with the app (gateway, 2 replicas); yields its base URL."""
    import ray
    from ray import serve

    from deploy.ray.local import init_local

    env = {k: v for k, v in h.base_env().items() if k.startswith(("HF_", "TRANSFORMERS_", "TOKENIZERS_",
                                                                  "OMP_", "UNIVERSAL_RUNTIME_"))}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    env["RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S"] = "0.5"  # as deploy/ray/serve.yaml
    init_local(num_cpus=2, logging_level="WARNING", runtime_env={"env_vars": env}, log_to_driver=False)
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        url = f"http://127.0.0.1:{port}"
        deploy(h, url)
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()


def _alternate(post: Any, models: list[str], n: int) -> tuple[float, int]:
    """Seconds for n sequential embeddings requests alternating over `models`, and the failures."""
    failures = 0
    started = time.perf_counter()
    for i in range(n):
        r = post("/v1/embeddings", json={"model": models[i % len(models)], "input": "hello world"})
        failures += r.status_code != 200
    return time.perf_counter() - started, failures


def run(h: Harness) -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        h.skip("2 replicas vs 1 server (two models, tight budget)", "ray is not installed (pip install .[ray])")
        return
    n = 20 if h.quick else 60
    small = str(build_small_encoder(h.tmp / "small-bert"))
    models = [MINILM_ID, small]
    tiny = {"model": MINILM_ID, "input": "hi"}
    with h.server(env={"UNIVERSAL_RUNTIME_MAX_LOADED_MODELS": "1"}) as srv:
        _alternate(srv.post, models, 2)  # warm-up: imports, file cache
        single_s, single_fail = _alternate(srv.post, models, n)
        single_evictions = _counter(srv.get("/metrics").text, "model_evictions_total")
        srv.post("/v1/embeddings", json=tiny)  # MiniLM loaded again for the latency rows
        with ray_app(h) as url, httpx.Client(base_url=url, timeout=120) as client:
            _alternate(client.post, models, 4)  # warm-up: each replica loads its model once
            time.sleep(1.0)  # the replicas' model ids reach Serve's routers
            ray_s, ray_fail = _alternate(client.post, models, n)
            ray_evictions = sum(_counter(client.get("/metrics", headers={HEADER: m}).text, "model_evictions_total")
                                for m in models)
            rounds = max(5, h.rounds * 4)
            ours, base = h.interleave(lambda: timed(lambda: client.post("/v1/embeddings", json=tiny)),
                                      lambda: srv.timed_post("/v1/embeddings", json=tiny), rounds=rounds)
            deploy(h, url, gateway=False)  # the runtime as the ingress: Serve's proxy only
            client.post("/v1/embeddings", json=tiny, headers={HEADER: MINILM_ID})
            direct, base2 = h.interleave(
                lambda: timed(lambda: client.post("/v1/embeddings", json=tiny, headers={HEADER: MINILM_ID})),
                lambda: srv.timed_post("/v1/embeddings", json=tiny), rounds=rounds)
    h.result("throughput, 2 models alternating: 2 Serve replicas vs 1 server (capacity 1)",
             Stats.of([n / ray_s]), Stats.of([n / single_s]), unit="req/s", higher_is_better=True,
             note=f"{n} requests; evictions: Serve {ray_evictions:.0f}, single {single_evictions:.0f}; "
                  f"failures: Serve {ray_fail}, single {single_fail}")
    h.result("tiny request latency through Serve (proxy + gateway) vs the single server", ours, base,
             target="<=1.3", note="one short text, model loaded; loopback")
    h.result("tiny request latency through Serve's proxy only (gateway: false) vs the single server", direct,
             base2, target="<=1.3", note="same request, with the serve_multiplexed_model_id header")
