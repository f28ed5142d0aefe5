"""The model contract: the shape every model class shares (category, capabilities, its own worker thread,
memory accounting) and what a loader is given (`LoadContext`). `core/` knows models only through it."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

T = TypeVar("T")

CATEGORIES = ("causal", "encoder", "diffusion", "vision", "audio", "multimodal", "speech")


@dataclass
class LoadContext:
    """What a loader needs besides the model's files: device, dtype and per-model options."""

    device: str = "cpu"
    dtype: str = "fp32"  # fp32 | fp16 | bf16
    auto_dtype: bool = False  # the dtype is the `auto` default's pick, so a loader may pick a faster one
    torch_threads: int = 0  # the torch_threads setting; 0 = auto
    trust_remote_code: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    token: str | None = None
    progress: Callable[[str], None] = lambda message: None

    def torch_dtype(self) -> Any:
        import torch

        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.dtype]


class BaseModel:
    """A loaded model. Subclasses set `category` and `capabilities` and implement their category's methods.

    All inference runs through `run()`, on the model's own worker thread (one at a time per model, so
    torch state is never shared between threads), never on the event loop.
    """

    category: ClassVar[str] = ""
    capabilities: ClassVar[frozenset[str]] = frozenset()
    workers: ClassVar[int] = 1

    def __init__(self, model_id: str, ctx: LoadContext) -> None:
        self.model_id = model_id
        self.ctx = ctx
        self._executor: ThreadPoolExecutor | None = None

    @property
    def executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix=self._worker_prefix)
        return self._executor

    @property
    def _worker_prefix(self) -> str:
        return f"model-{self.category}"

    def on_worker_thread(self) -> bool:
        """Whether the caller runs on one of this model's worker threads (waiting on them would deadlock)."""
        return threading.current_thread().name.startswith(self._worker_prefix)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn(*args, **kwargs)` on this model's worker thread and await the result."""
        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        return await loop.run_in_executor(self.executor, call)

    def memory_bytes(self) -> int:
        """Bytes this model holds (parameters and buffers); subclasses with torch modules override."""
        return 0

    def describe(self) -> dict[str, Any]:
        """Extra fields shown in GET /v1/models/{id} (e.g. pooling, sub-kind)."""
        return {}

    def close(self) -> None:
        """Release references so memory can be freed. Subclasses extend and call super()."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def module_bytes(*modules: Any) -> int:
    """Bytes of parameters and buffers of torch modules (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for module in modules:
        if module is None:
            continue
        tensors = list(module.parameters()) + list(module.buffers())
        for t in tensors:
            key = t.data_ptr()
            if key in seen:
                continue
            seen.add(key)
            total += t.numel() * t.element_size()
    return total
