"""Model manager: single-flight loads, LRU by count and bytes, TTL, pinning, failures, unload waits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from core.errors import InsufficientMemory, ModelNotFound, ServerOverloaded, UnsupportedModelType
from core.manager import ModelLoadFailed, ModelManager
from tests.conftest import make_settings
from tests.fakes import FakeClock, FakeLoader, FakeResolver


def manager(tmp_path: Path, loader: FakeLoader | None = None, clock: FakeClock | None = None,
            estimates: dict[str, int] | None = None, **overrides: object) -> ModelManager:
    settings = make_settings(tmp_path, memory_budget="1000000", **overrides)
    return ModelManager(settings, FakeResolver(estimates), loader=loader or FakeLoader(),
                        clock=clock or FakeClock())


def loaded(m: ModelManager) -> list[str]:
    return [e.spec.key for e in m.entries()]


async def use(m: ModelManager, model: str, seconds: float = 0.0) -> str:
    async with m.acquire(model, "encoder") as model_obj:
        if seconds:
            await asyncio.sleep(seconds)
        return model_obj.model_id


async def test_sixteen_concurrent_first_requests_cause_one_load(tmp_path: Path) -> None:
    loader = FakeLoader(delays={"fake/a": 0.2})
    m = manager(tmp_path, loader)
    results = await asyncio.gather(*(use(m, "fake/a") for _ in range(16)))
    assert results == ["fake/a"] * 16
    assert loader.loads == {"fake/a": 1}


async def test_lru_eviction_by_count_takes_least_recently_used(tmp_path: Path) -> None:
    m = manager(tmp_path, max_loaded_models=2)
    await use(m, "fake/a")
    await use(m, "fake/b")
    await use(m, "fake/a")  # a is now more recent than b
    await use(m, "fake/c")
    assert sorted(loaded(m)) == ["fake/a", "fake/c"]


async def test_byte_budget_evicts_until_the_new_model_fits(tmp_path: Path) -> None:
    loader = FakeLoader(sizes={"fake/a": 400_000, "fake/b": 400_000, "fake/c": 500_000})
    estimates = {"fake/a": 400_000, "fake/b": 400_000, "fake/c": 500_000}
    m = manager(tmp_path, loader, estimates=estimates, max_loaded_models=10)
    await use(m, "fake/a")
    await use(m, "fake/b")
    await use(m, "fake/c")  # 400k+400k+500k > 1M: a (LRU) goes
    assert sorted(loaded(m)) == ["fake/b", "fake/c"]
    assert m.used_bytes() == 900_000


async def test_model_larger_than_budget_is_503_and_others_keep_working(tmp_path: Path) -> None:
    m = manager(tmp_path, estimates={"fake/huge": 5_000_000})
    await use(m, "fake/a")
    with pytest.raises(InsufficientMemory):
        await use(m, "fake/huge")
    assert await use(m, "fake/a") == "fake/a"
    assert loaded(m) == ["fake/a"]


async def test_in_use_and_pinned_models_are_never_evicted(tmp_path: Path) -> None:
    estimates = {"fake/a": 600_000, "fake/p": 300_000, "fake/b": 600_000}
    loader = FakeLoader(sizes=estimates)
    m = manager(tmp_path, loader, estimates=estimates, max_loaded_models=10)
    await m.load("fake/p", "encoder", pin=True)
    busy = asyncio.create_task(use(m, "fake/a", seconds=0.3))
    await asyncio.sleep(0.05)
    with pytest.raises(InsufficientMemory):  # a is in use, p is pinned: nothing can go
        await use(m, "fake/b")
    assert await busy == "fake/a"
    await use(m, "fake/b")  # now a is idle and can be evicted
    assert sorted(loaded(m)) == ["fake/b", "fake/p"]


async def test_idle_ttl_uses_the_injected_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    m = manager(tmp_path, clock=clock, idle_ttl_seconds=60)
    await use(m, "fake/a")
    await m.load("fake/pinned", "encoder", pin=True)
    clock.advance(30)
    await use(m, "fake/b")
    clock.advance(31)
    assert await m.sweep() == 1  # only a has been idle for 61 s
    assert sorted(loaded(m)) == ["fake/b", "fake/pinned"]
    clock.advance(1000)
    await m.sweep()
    assert loaded(m) == ["fake/pinned"]


async def test_failed_load_leaves_no_entry_and_next_request_retries(tmp_path: Path) -> None:
    loader = FakeLoader(failures={"fake/flaky": 1})
    m = manager(tmp_path, loader)
    with pytest.raises(ModelLoadFailed) as info:
        await use(m, "fake/flaky")
    assert "corrupt weights" in info.value.message
    assert loaded(m) == []
    assert await use(m, "fake/flaky") == "fake/flaky"
    assert loader.loads["fake/flaky"] == 2


async def test_unload_waits_for_running_request(tmp_path: Path) -> None:
    m = manager(tmp_path)
    busy = asyncio.create_task(use(m, "fake/a", seconds=0.3))
    await asyncio.sleep(0.05)
    model = m.entries()[0].model
    unload = asyncio.create_task(m.unload("fake/a"))
    await asyncio.sleep(0.1)
    assert not unload.done() and not model.closed  # still in use
    assert await busy == "fake/a"
    await unload
    assert model.closed and loaded(m) == []
    with pytest.raises(ModelNotFound):
        await m.unload("fake/a")


async def test_unknown_model_and_wrong_capability(tmp_path: Path) -> None:
    m = manager(tmp_path)
    with pytest.raises(ModelNotFound):
        await use(m, "nothing/here")
    with pytest.raises(UnsupportedModelType):
        async with m.acquire("fake/a", "encoder", "embeddings"):
            pass


async def test_queue_bound_answers_overloaded(tmp_path: Path) -> None:
    m = manager(tmp_path, max_queue_per_model=2)
    holders = [asyncio.create_task(use(m, "fake/a", seconds=0.2)) for _ in range(2)]
    await asyncio.sleep(0.05)
    with pytest.raises(ServerOverloaded) as info:
        await use(m, "fake/a")
    assert info.value.headers["Retry-After"]
    await asyncio.gather(*holders)
    assert await use(m, "fake/a") == "fake/a"


async def test_close_unloads_everything_and_refuses_new_work(tmp_path: Path) -> None:
    m = manager(tmp_path)
    await use(m, "fake/a")
    model = m.entries()[0].model
    await m.close(timeout=1)
    assert model.closed and loaded(m) == []
    with pytest.raises(Exception, match="shutting down"):
        await use(m, "fake/a")


async def test_eviction_runs_a_full_gc_when_a_cycle_holds_the_model(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import core.manager as manager_module

    calls: list[int] = []
    monkeypatch.setattr(manager_module.gc, "collect", lambda *a: calls.append(1) or 0)
    m = manager(tmp_path)
    await use(m, "fake/cyclic")
    model = m.entries()[0].model
    model.me = model  # a reference cycle: reference counting alone cannot free it
    del model
    await m.unload("fake/cyclic")
    assert calls and m.entries() == []
