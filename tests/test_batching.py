"""The generic micro-batcher: gathering, sorting, splitting back, isolation of failures, bounded queue."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from core.batching import MicroBatcher, batcher_for
from core.contract import BaseModel, LoadContext
from core.errors import InvalidRequest, ServerOverloaded, classify


class Recorder(BaseModel):
    """A model whose batched function doubles numbers and records every batch it sees."""

    category = "encoder"

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__("fake/recorder", LoadContext())
        self.batches: list[list[Any]] = []
        self.started: list[float] = []  # time.monotonic() at the start of each batch
        self.threads: set[str] = set()
        self.delay = delay

    def double(self, items: list[Any]) -> list[Any]:
        self.batches.append(list(items))
        self.started.append(time.monotonic())
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        if any(item == "explode" for item in items):
            raise RuntimeError("the batch exploded")
        return [InvalidRequest(f"bad {item}", param=f"input.{item}") if item == "bad" else item * 2
                for item in items]


async def test_concurrent_requests_run_as_one_batch_and_get_their_own_results() -> None:
    model = Recorder()
    batcher = MicroBatcher(model, model.double, max_wait_s=0.05, max_batch_size=32)
    results = await asyncio.gather(*(batcher.submit([i, i + 100]) for i in range(8)))
    assert results == [[2 * i, 2 * (i + 100)] for i in range(8)]
    assert len(model.batches) == 1 and len(model.batches[0]) == 16
    assert batcher.batches_run == 1


async def test_batch_is_sorted_by_size_and_results_return_in_request_order() -> None:
    model = Recorder()
    batcher = MicroBatcher(model, model.double, max_wait_s=0.05)
    words = ["ccc", "a", "bbbbb", "dd"]
    result = await batcher.submit(words, [len(w) for w in words])
    assert model.batches == [["a", "dd", "ccc", "bbbbb"]]
    assert result == [w * 2 for w in words]


async def test_batches_never_exceed_max_batch_size() -> None:
    model = Recorder()
    batcher = MicroBatcher(model, model.double, max_wait_s=0.01, max_batch_size=4)
    results = await asyncio.gather(*(batcher.submit([i]) for i in range(10)))
    assert [r[0] for r in results] == [2 * i for i in range(10)]
    assert max(len(b) for b in model.batches) == 4
    assert sum(len(b) for b in model.batches) == 10


async def test_a_lone_client_does_not_wait_the_window() -> None:
    model = Recorder()
    batcher = MicroBatcher(model, model.double, max_wait_s=0.05)
    for i in range(3):
        start = time.monotonic()
        assert await batcher.submit([i]) == [2 * i]
        assert time.monotonic() - start < 0.04  # ran at once
        await asyncio.sleep(0.08)  # the next request comes later than the window


async def test_requests_arriving_close_together_wait_for_each_other() -> None:
    model = Recorder()
    batcher = MicroBatcher(model, model.double, max_wait_s=0.2)
    await batcher.submit([0])
    first = asyncio.ensure_future(batcher.submit([1]))  # within the window of the previous arrival
    await asyncio.sleep(0.05)
    second = asyncio.ensure_future(batcher.submit([2]))
    assert await first == [2] and await second == [4]
    assert model.batches == [[0], [1, 2]]


async def test_items_arriving_while_a_batch_runs_form_the_next_batch() -> None:
    model = Recorder(delay=0.1)
    batcher = MicroBatcher(model, model.double, max_wait_s=0.0)
    first = asyncio.ensure_future(batcher.submit([0]))
    await asyncio.sleep(0.03)  # the first item runs alone; these arrive meanwhile
    rest = await asyncio.gather(*(batcher.submit([i]) for i in range(1, 6)))
    assert await first == [0] and [r[0] for r in rest] == [2, 4, 6, 8, 10]
    assert model.batches == [[0], [1, 2, 3, 4, 5]]


async def test_steady_concurrent_clients_fire_as_soon_as_all_have_resubmitted() -> None:
    model = Recorder()
    batcher = MicroBatcher(model, model.double, max_wait_s=0.5)
    await asyncio.gather(*(batcher.submit([i]) for i in range(4)))  # learns that 4 clients are active
    start = time.monotonic()
    await asyncio.gather(*(batcher.submit([i]) for i in range(4)))
    assert time.monotonic() - start < 0.25  # did not sit out the 0.5 s window
    assert model.batches == [[0, 1, 2, 3], [0, 1, 2, 3]]


async def test_an_item_that_waited_through_a_batch_waits_for_the_clients_that_batch_answers() -> None:
    model = Recorder(delay=0.1)
    batcher = MicroBatcher(model, model.double, max_wait_s=0.05)

    async def client(i: int) -> list[Any]:  # closed loop: re-submits 10 ms after its answer
        await batcher.submit([i])
        await asyncio.sleep(0.01)
        return await batcher.submit([i + 10])

    clients = [asyncio.ensure_future(client(i)) for i in range(3)]
    await asyncio.sleep(0.08)  # the batch of three runs from 0.05 s to 0.15 s; another request comes meanwhile
    late = asyncio.ensure_future(batcher.submit([99]))
    assert await late == [198] and [await c for c in clients] == [[20], [22], [24]]
    # Not [99] alone the moment the model freed, then the three: one forward pass instead of two.
    assert model.batches == [[0, 1, 2], [99, 10, 11, 12]]


async def test_arrivals_that_keep_coming_extend_the_wait_up_to_max_delay() -> None:
    model = Recorder()
    batcher = MicroBatcher(model, model.double, max_wait_s=0.05, max_delay_s=0.2)
    start = time.monotonic()
    tasks = []
    for i in range(12):  # one request every 30 ms: never 50 ms without an arrival
        tasks.append(asyncio.ensure_future(batcher.submit([i])))
        await asyncio.sleep(0.03)
    assert [(await t)[0] for t in tasks] == [2 * i for i in range(12)]
    assert model.batches[0] == [0]  # the first came alone and ran at once
    second = model.batches[1]
    assert second[0] == 1 and 4 <= len(second) <= 8  # held until 0.2 s after item 1 arrived
    assert 0.2 <= model.started[1] - start <= 0.35


async def test_the_batched_function_runs_on_the_models_worker_thread() -> None:
    model = Recorder()
    batcher = MicroBatcher(model, model.double, max_wait_s=0.0)
    await batcher.submit([1])
    assert model.threads and all(name.startswith("model-encoder") for name in model.threads)


async def test_an_item_error_fails_only_its_own_request() -> None:
    model = Recorder()
    batcher = MicroBatcher(model, model.double, max_wait_s=0.05)
    good, bad = await asyncio.gather(batcher.submit([1, 2]), batcher.submit([3, "bad"]), return_exceptions=True)
    assert good == [2, 4]
    assert isinstance(bad, InvalidRequest) and bad.param == "input.bad"
    assert len(model.batches) == 1


async def test_a_failing_batch_is_retried_item_by_item_so_neighbours_succeed() -> None:
    model = Recorder()
    batcher = MicroBatcher(model, model.double, max_wait_s=0.05)
    ok, boom = await asyncio.gather(batcher.submit([5]), batcher.submit(["explode"]), return_exceptions=True)
    assert ok == [10]
    assert isinstance(boom, RuntimeError)
    assert len(model.batches) == 3  # the joint batch, then each item alone


async def test_a_full_queue_raises_server_overloaded_with_retry_after() -> None:
    model = Recorder(delay=0.2)
    batcher = MicroBatcher(model, model.double, max_wait_s=0.0, max_batch_size=1, max_queue=3)
    first = asyncio.ensure_future(batcher.submit([1]))
    await asyncio.sleep(0.05)  # the first item is running; the queue is empty again
    waiting = asyncio.ensure_future(batcher.submit([2, 3, 4]))  # fills the queue (3 of 3)
    await asyncio.sleep(0)
    with pytest.raises(ServerOverloaded) as info:
        await batcher.submit([5])
    status, body, headers = classify(info.value)
    assert status == 429 and body["error"]["code"] == "server_overloaded"
    assert int(headers["Retry-After"]) >= 1
    assert await first == [2] and await waiting == [4, 6, 8]


async def test_a_request_larger_than_the_queue_is_admitted_when_nothing_waits() -> None:
    model = Recorder()
    batcher = MicroBatcher(model, model.double, max_wait_s=0.0, max_batch_size=4, max_queue=2)
    assert await batcher.submit(list(range(9))) == [2 * i for i in range(9)]


async def test_items_of_a_cancelled_request_are_skipped() -> None:
    model = Recorder(delay=0.1)
    batcher = MicroBatcher(model, model.double, max_wait_s=0.0, max_batch_size=1)
    first = asyncio.ensure_future(batcher.submit([1]))
    await asyncio.sleep(0.02)
    doomed = asyncio.ensure_future(batcher.submit([2]))
    await asyncio.sleep(0)
    doomed.cancel()
    assert await first == [2]
    await asyncio.sleep(0.15)
    assert [b for b in model.batches] == [[1]]


async def test_batcher_for_reuses_one_batcher_per_model_and_name_with_settings() -> None:
    model = Recorder()
    settings = SimpleNamespace(batch_wait_ms=7, max_batch_size=3, max_queue_per_model=2)
    a = batcher_for(model, model.double, settings, "embed")
    assert batcher_for(model, model.double, settings, "embed") is a
    assert batcher_for(model, model.double, settings, "classify") is not a
    assert (a.max_wait_s, a.max_batch_size, a.max_queue) == (0.007, 3, 6)


async def test_a_batcher_does_not_keep_an_unloaded_model_alive() -> None:
    import gc
    import weakref

    model = Recorder()
    settings = SimpleNamespace(batch_wait_ms=0, max_batch_size=4, max_queue_per_model=4)
    assert await batcher_for(model, model.double, settings, "embed").submit([1]) == [2]
    gone = weakref.ref(model)
    model.close()
    del model
    gc.collect()
    assert gone() is None
