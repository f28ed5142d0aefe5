"""Micro-batching for encoders (ARCHITECTURE.md pattern 8), independent of what the items are.

Concurrent requests for one model submit their items to that model's `MicroBatcher`. Once the model is free
the batcher gathers: it starts the batch when as many items wait as the largest of the last few batches held
(or `max_batch_size`), when no new item has arrived for `max_wait_s`, or when the oldest item has waited
`max_delay_s` (6x `max_wait_s` by default) since the model was free to run it. It sorts the batch by the
items' sizes so padding is small, runs the batched function once through `model.run(...)` on the model's
worker thread, and hands each request back its own results in its own order. A full queue raises
`ServerOverloaded` (429 with Retry-After) instead of growing without bound.

A lone request (none arrived within the window before it) runs at once, adding no latency. Waiting counts
from when the model became free, not from when an item arrived: with steady concurrent clients one of them
often re-submits while a batch still runs, and starting that item alone the moment the model frees (while
the others' responses are still being sent) would cost a whole forward pass for one item. Measured with 16
closed-loop MiniLM clients, batches then alternate 1 and 15 items; waiting out the burst gives steady
batches of 16 and about 10% more throughput.

The batched function takes a list of items and returns one result per item, in the same order. A result
that is an exception instance is raised for that item only (e.g. one input that is too long). If the whole
call raises, the items are retried one by one so a single bad item cannot fail its neighbours' requests.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.errors import ServerOverloaded

logger = logging.getLogger("universal_runtime.batching")

BatchFn = Callable[[list[Any]], Sequence[Any]]


@dataclass
class _Pending:
    item: Any
    size: int
    future: asyncio.Future[Any]
    enqueued: float = field(default_factory=time.monotonic)
    gap: float = math.inf  # seconds since the previous request arrived


class MicroBatcher:
    """Gathers items from concurrent requests into batches run by one model, one batch at a time."""

    def __init__(self, model: Any, fn: BatchFn, *, max_wait_s: float = 0.005, max_batch_size: int = 32,
                 max_queue: int = 2048, name: str = "batch", max_delay_s: float | None = None) -> None:
        # Weak references: batchers live in a WeakKeyDictionary keyed by the model, so holding the model (or
        # its bound method) strongly here would keep every unloaded model alive forever.
        self._model = weakref.ref(model)
        self._fn: Callable[[], BatchFn | None] = (
            weakref.WeakMethod(fn) if getattr(fn, "__self__", None) is model else (lambda: fn))  # type: ignore[arg-type]
        self.max_wait_s = max(0.0, max_wait_s)
        self.max_delay_s = max(self.max_wait_s, 6 * self.max_wait_s if max_delay_s is None else max_delay_s)
        self.max_batch_size = max(1, max_batch_size)
        self.max_queue = max(1, max_queue)
        self.name = name
        self.loop = asyncio.get_running_loop()
        self._queue: deque[_Pending] = deque()
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.batches_run = 0  # for tests and metrics: how many batched calls were made
        self.largest_batch = 0
        self._recent: deque[int] = deque(maxlen=4)  # sizes of the last batches
        self._last_arrival = -math.inf
        self._free_since = -math.inf  # when the last batch finished

    @property
    def model(self) -> Any:
        """The model this batcher runs on (an error once the model has been unloaded and freed)."""
        model = self._model()
        if model is None:
            raise RuntimeError(f"the model of batcher '{self.name}' was unloaded")
        return model

    @property
    def pending(self) -> int:
        """Items waiting (not yet running)."""
        return len(self._queue)

    async def submit(self, items: Sequence[Any], sizes: Sequence[int] | None = None) -> list[Any]:
        """Queue `items` (one request's), wait for their batches, return their results in order.

        Raises ServerOverloaded when the queue is full. A request larger than the whole queue is still
        admitted when nothing else waits, so big requests are slow, never refused forever.
        """
        if not items:
            return []
        if sizes is not None and len(sizes) != len(items):
            raise ValueError("sizes must match items")
        if self._queue and len(self._queue) + len(items) > self.max_queue:
            wait = self._estimated_wait()
            raise ServerOverloaded(
                f"The queue for model '{getattr(self._model(), 'model_id', '?')}' is full "
                f"({len(self._queue)} items waiting); retry later.", retry_after=wait)
        futures: list[asyncio.Future[Any]] = []
        now = time.monotonic()
        gap, self._last_arrival = now - self._last_arrival, now
        for i, item in enumerate(items):
            fut: asyncio.Future[Any] = self.loop.create_future()
            self._queue.append(_Pending(item, int(sizes[i]) if sizes is not None else 0, fut, now, gap))
            futures.append(fut)
        self._arrived.set()
        if self._task is None or self._task.done():
            self._task = self.loop.create_task(self._drain(), name=f"batcher-{self.name}")
        results = await asyncio.gather(*futures, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    def _estimated_wait(self) -> int:
        batches = math.ceil(len(self._queue) / self.max_batch_size)
        return max(1, min(60, math.ceil(batches * max(self.max_wait_s, 0.05))))

    async def _drain(self) -> None:
        try:
            while self._queue:
                await self._gather()
                batch = self._take()
                if batch:
                    await self._run(batch)
                    self._free_since = time.monotonic()
        except BaseException as exc:  # cancelled at shutdown: nobody may wait forever
            for pending in self._queue:
                if not pending.future.done():
                    pending.future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
            self._queue.clear()
            raise

    async def _gather(self) -> None:
        """Wait until as many items as recent batches held are queued, no item has arrived for `max_wait_s`,
        or the oldest item has waited `max_delay_s`, counting from when the model was free to run it."""
        oldest = self._queue[0]
        expected = max(self._recent, default=1)
        lone = self._queue[-1].enqueued == oldest.enqueued  # everything queued came with one request
        if expected <= 1 and lone and oldest.gap > self.max_wait_s:
            return  # a lone client: nobody arrived within the window before it, so nobody is likely to now
        enough = min(expected, self.max_batch_size) if expected > 1 else self.max_batch_size
        start = max(oldest.enqueued, self._free_since)
        latest = start + self.max_delay_s
        while len(self._queue) < enough:
            quiet = max(start, self._last_arrival) + self.max_wait_s  # no arrival for max_wait_s by then
            remaining = min(quiet, latest) - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                pass  # the loop re-checks both deadlines

    def _take(self) -> list[_Pending]:
        batch: list[_Pending] = []
        while self._queue and len(batch) < self.max_batch_size:
            pending = self._queue.popleft()
            if not pending.future.done():  # skip items of cancelled requests
                batch.append(pending)
        batch.sort(key=lambda p: p.size)
        return batch

    async def _run(self, batch: list[_Pending]) -> None:
        self.batches_run += 1
        self.largest_batch = max(self.largest_batch, len(batch))
        self._recent.append(len(batch))
        try:
            results = await self.model.run(self._call, [p.item for p in batch])
        except Exception as exc:  # noqa: BLE001 - retried item by item below
            if len(batch) == 1:
                self._deliver(batch[0], exc)
                return
            logger.info("batch of %d failed (%s: %s); retrying items one by one", len(batch),
                        type(exc).__name__, exc)
            for pending in batch:
                try:
                    result = (await self.model.run(self._call, [pending.item]))[0]
                except Exception as one:  # noqa: BLE001
                    result = one
                self._deliver(pending, result)
            return
        for pending, result in zip(batch, results, strict=True):
            self._deliver(pending, result)

    def _call(self, items: list[Any]) -> list[Any]:
        fn = self._fn()
        if fn is None:
            raise RuntimeError(f"the model of batcher '{self.name}' was unloaded")
        results = list(fn(items))
        if len(results) != len(items):
            raise RuntimeError(f"batched function returned {len(results)} results for {len(items)} items")
        return results

    @staticmethod
    def _deliver(pending: _Pending, result: Any) -> None:
        if pending.future.done():
            return
        if isinstance(result, BaseException):
            pending.future.set_exception(result)
        else:
            pending.future.set_result(result)


_BATCHERS: weakref.WeakKeyDictionary[Any, dict[str, MicroBatcher]] = weakref.WeakKeyDictionary()


def batcher_for(model: Any, fn: BatchFn, settings: Any, name: str) -> MicroBatcher:
    """The batcher named `name` of a loaded model, created on first use from the runtime's settings.

    Settings used: `batch_wait_ms`, `max_batch_size`, and the queue bound `max_queue_per_model *
    max_batch_size` items waiting.
    """
    loop = asyncio.get_running_loop()
    per_model = _BATCHERS.setdefault(model, {})
    batcher = per_model.get(name)
    if batcher is None or batcher.loop is not loop:
        batcher = MicroBatcher(
            model, fn, max_wait_s=float(settings.batch_wait_ms) / 1000.0,
            max_batch_size=int(settings.max_batch_size),
            max_queue=int(settings.max_queue_per_model) * int(settings.max_batch_size), name=name)
        per_model[name] = batcher
    return batcher
