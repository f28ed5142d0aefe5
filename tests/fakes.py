"""Fakes that implement the model interface, for manager and API tests without real models."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from core.contract import BaseModel, LoadContext
from core.errors import ModelNotFound
from core.resolve import ModelSpec


class FakeModel(BaseModel):
    """A model that 'embeds' by echoing lengths and can be slow on purpose."""

    category = "encoder"
    capabilities = frozenset({"fake"})

    def __init__(self, model_id: str, ctx: LoadContext, size: int = 1000, delay: float = 0.0) -> None:
        super().__init__(model_id, ctx)
        self.size = size
        self.delay = delay
        self.closed = False

    def memory_bytes(self) -> int:
        return self.size

    def work(self, seconds: float = 0.0) -> str:
        time.sleep(seconds or self.delay)
        return self.model_id

    def describe(self) -> dict[str, Any]:
        return {"fake": True}

    def close(self) -> None:
        self.closed = True
        super().close()


@dataclass
class FakeLoader:
    """Counts loads; per-model size, delay and failures are configurable."""

    sizes: dict[str, int] = field(default_factory=dict)
    delays: dict[str, float] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)  # model -> how many loads fail first
    loads: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, category: str):  # noqa: ANN204 - mimics core.registry.get_loader
        def load(spec: ModelSpec, ctx: LoadContext) -> BaseModel:
            with self.lock:
                self.loads[spec.key] = self.loads.get(spec.key, 0) + 1
                failing = self.failures.get(spec.key, 0)
                if failing:
                    self.failures[spec.key] = failing - 1
            time.sleep(self.delays.get(spec.key, 0.0))
            if failing:
                raise OSError(f"corrupt weights in {spec.key}")
            return FakeModel(spec.key, ctx, size=self.sizes.get(spec.key, 1000))

        return load


class FakeResolver:
    """Resolves any id starting with 'fake/' to itself; everything else is a 404."""

    def __init__(self, estimates: dict[str, int] | None = None) -> None:
        self.aliases: dict[str, Any] = {}
        self.estimates = estimates or {}

    def resolve(self, model: str | None, category: str, capability: str | None = None) -> ModelSpec:
        model = model or "fake/default"
        if not model.startswith("fake/"):
            raise ModelNotFound(f"Model '{model}' was not found.")
        spec = FakeSpec(requested=model, key=model, category=category)
        spec.estimate = self.estimates.get(model, 0)
        return spec


class FakeSpec(ModelSpec):
    estimate: int = 0

    def estimate_bytes(self) -> int:
        return self.estimate


class FakeClock:
    """An injected clock for TTL tests."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
