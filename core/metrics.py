"""Prometheus metrics (prometheus-client, a per-app registry so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

P = "universal_runtime_"


class Metrics:
    """Every metric API.md names, with small helpers the manager and routers call."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(P + "requests_total", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.duration = Histogram(P + "request_duration_seconds", "HTTP request latency", ["route"], registry=r,
                                  buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120))
        self.generated_tokens = Counter(P + "generated_tokens_total", "Tokens generated", ["model"], registry=r)
        self.ttft = Histogram(P + "time_to_first_token_seconds", "Time to first generated token", ["model"],
                              registry=r, buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.queue_depth = Gauge(P + "queue_depth", "Requests holding or waiting for a model", ["model"],
                                 registry=r)
        self.counters = {
            name: Counter(P + name, help_, registry=r) for name, help_ in (
                ("model_loads_total", "Model loads"),
                ("model_load_failures_total", "Failed model loads"),
                ("model_evictions_total", "Models unloaded (evicted, idle, explicit)"),
            )
        }
        self.loaded_models = Gauge(P + "loaded_models", "Models loaded now", registry=r)
        self.model_bytes = Gauge(P + "model_memory_bytes", "Memory held by each loaded model", ["model"],
                                 registry=r)
        self._known_models: set[str] = set()

    def inc(self, name: str) -> None:
        self.counters[name].inc()

    def set_models(self, sizes: dict[str, int]) -> None:
        self.loaded_models.set(len(sizes))
        for gone in self._known_models - set(sizes):
            self.model_bytes.remove(gone)
        for model, size in sizes.items():
            self.model_bytes.labels(model).set(size)
        self._known_models = set(sizes)

    def set_queue(self, model: str, depth: int) -> None:
        self.queue_depth.labels(model).set(depth)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.duration.labels(route).observe(seconds)

    def observe_generation(self, model: str, tokens: int, ttft: float | None = None) -> None:
        if tokens:
            self.generated_tokens.labels(model).inc(tokens)
        if ttft is not None:
            self.ttft.labels(model).observe(ttft)

    def render(self) -> bytes:
        return generate_latest(self.registry)
