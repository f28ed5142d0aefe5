"""The model manager: a reference-counted LRU cache of loaded models (ARCHITECTURE.md pattern 4).

`async with manager.acquire(model, category, capability) as m:` resolves the id, loads the model once
(single-flight, in a worker thread), admits the request against the model's queue bound, and keeps the
model from being evicted or unloaded until the block ends.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import gc
import logging
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from core.contract import BaseModel, LoadContext
from core.device import DevicePolicy
from core.entry import Entry, ModelLoadFailed
from core.errors import (
    APIError,
    InsufficientMemory,
    ModelNotFound,
    ServerOverloaded,
    Unavailable,
    UnsupportedModelType,
    is_out_of_memory,
)
from core.load_context import build_context, build_model, progress_reporter
from core.load_options import RequestOptions, conflict
from core.registry import Loader, check_category, get_loader
from core.resolve import ModelOptions, ModelSpec, Resolver
from core.settings import Settings

logger = logging.getLogger("universal_runtime.manager")
# transformers/diffusers loading uses process-wide state (default device contexts, lazy imports): models are
# built one at a time per process, whichever manager asks.
BUILD_LOCK = threading.Lock()
RESOLVED_TTL = 30.0  # seconds a (model, category) -> loaded entry shortcut is trusted


class ModelManager:
    """Loads, caches, counts users of, and evicts models."""

    def __init__(
        self,
        settings: Settings,
        resolver: Resolver | None = None,
        *,
        loader: Callable[[str], Loader] = get_loader,
        clock: Callable[[], float] = time.monotonic,
        device: DevicePolicy | None = None,
        metrics: Any = None,
    ) -> None:
        self.settings = settings
        self.resolver = resolver or Resolver(settings)
        self.get_loader = loader
        self.clock = clock
        self.device = device or DevicePolicy(settings)
        self.metrics = metrics
        self._entries: OrderedDict[tuple[str, str], Entry] = OrderedDict()
        self._loading: dict[tuple[str, str], asyncio.Task[Entry]] = {}
        # load progress listeners (message, elapsed seconds), called from the loading thread
        self._listeners: dict[tuple[str, str], list[Callable[[str, float], None]]] = {}
        self._reserved = 0
        self._freeing: dict[asyncio.Task[None], int] = {}  # background frees of evicted models -> their bytes
        self._load_pool = ThreadPoolExecutor(2, thread_name_prefix="model-load")
        # Building models is serialised (downloads are not): transformers / diffusers loading is not thread-safe
        # (global default device and dtype while weights load, lazy imports); two at once broke both loads.
        self._shutting_down = False
        self._trimming: asyncio.Future[None] | None = None
        # (model, category, capability) -> (when, spec): requests for a loaded model skip re-resolving it
        # (a resolve walks the hub cache and package folders: about 1 ms of GIL-holding work per request)
        self._resolved: dict[tuple[str | None, str, str | None], tuple[float, ModelSpec]] = {}
        self._given: dict[str, ModelOptions] = {}  # options given to load(), by model key, until unloaded

    # ----- queries -------------------------------------------------------------------------------
    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    def used_bytes(self) -> int:
        return sum(e.bytes for e in self._entries.values()) + self._reserved + sum(self._freeing.values())

    def budget_bytes(self) -> int | None:
        raw = str(self.settings.memory_budget).strip()
        if not raw or raw.lower() in ("none", "0", "unlimited"):
            return None
        if raw.endswith("%"):
            total = self.device.memory_total()
            return int(total * float(raw[:-1]) / 100) if total else None
        return int(float(raw))

    def find(self, model: str) -> list[Entry]:
        """Loaded entries a client's `model` string refers to (id, requested name or alias)."""
        names = {model}
        alias = self.resolver.aliases.get(model)
        if alias is not None:
            names.add(alias.model)
        return [e for e in self._entries.values()
                if e.spec.key in names or e.spec.requested in names or str(e.spec.path) in names]

    # ----- acquire / load ------------------------------------------------------------------------
    @asynccontextmanager
    async def acquire(self, model: str | None, category: str, capability: str | None = None,
                      token: str | None = None) -> AsyncIterator[BaseModel]:
        """Hold a loaded model for the duration of a request."""
        entry = await self._get_entry(model, category, capability, token=token)
        if capability and capability not in entry.model.capabilities:
            raise UnsupportedModelType(
                f"Model '{entry.spec.requested}' ({type(entry.model).__name__}) cannot serve this endpoint "
                f"(needs '{capability}'; it offers {', '.join(sorted(entry.model.capabilities)) or 'nothing'}).")
        if entry.active >= self.settings.max_queue_per_model:
            raise ServerOverloaded(f"Too many requests queued for model '{entry.spec.requested}'; retry later.")
        entry.active += 1
        entry.idle.clear()
        self._entries.move_to_end(entry.key)
        self._gauge_queue(entry)
        try:
            yield entry.model
        finally:
            entry.active -= 1
            entry.last_used = self.clock()
            if entry.active == 0:
                entry.idle.set()
                if len(self._entries) > self.settings.max_loaded_models and not self._shutting_down:
                    self._trimming = self._trimming or asyncio.ensure_future(self._trim())
            self._gauge_queue(entry)

    async def _trim(self) -> None:
        """Back to max_loaded_models once models loaded over it (while every other one was busy) go idle."""
        try:
            while len(self._entries) > self.settings.max_loaded_models and (victim := self._lru_idle()):
                await self._evict(victim, "capacity", background=True)
        finally:
            self._trimming = None

    async def load(self, model: str | None, category: str, *, pin: bool = False, token: str | None = None,
                   progress: Callable[[str, float], None] | None = None,
                   options: RequestOptions | None = None) -> Entry:
        """Load (or find loaded) a model; optionally pin it. `progress(message, elapsed)` hears the load's
        stages (also when it joins a load already under way); it is called from the loading thread. `options`
        apply over the config file's and stay with the model (reloads after an eviction too) until unloaded;
        a model loaded with other options is reloaded with these once its running requests finish."""
        if options is not None and options.model_fields_set:
            spec = await asyncio.to_thread(self.resolver.resolve, model, category)
            key = (spec.key, category)
            if key in self._loading:
                await asyncio.shield(self._loading[key])
            loaded = self._entries.get(key)
            self._given[spec.key] = options.over(spec.options, spec.key)
            if loaded is not None and (was := conflict(loaded.spec.options, options)):
                logger.info("reloading %s with other options (it had %s)", spec.key, was)
                pin = pin or loaded.pinned
                await self._evict(loaded, "reload with other options")
        entry = await self._get_entry(model, category, None, token=token, pin=pin, progress=progress)
        if pin:
            entry.pinned = True
        return entry

    async def _get_entry(self, model: str | None, category: str, capability: str | None, *,
                         token: str | None = None, pin: bool = False,
                         progress: Callable[[str, float], None] | None = None) -> Entry:
        if self._shutting_down:
            raise Unavailable("The server is shutting down.")
        shortcut = self._resolved.get((model, category, capability))
        if shortcut is not None and progress is None and not pin and time.monotonic() - shortcut[0] < RESOLVED_TTL:
            entry = self._entries.get((shortcut[1].key, category))
            if entry is not None and not entry.closing:
                return entry
        spec = await asyncio.to_thread(self.resolver.resolve, model, category, capability)
        if len(self._resolved) > 256:
            self._resolved.clear()
        self._resolved[(model, category, capability)] = (time.monotonic(), spec)
        spec.options = self._given.get(spec.key, spec.options)
        key = (spec.key, category)
        if progress is None:
            return await self._entry_for(spec, key, token, pin)
        listeners = self._listeners.setdefault(key, [])
        listeners.append(progress)
        try:
            return await self._entry_for(spec, key, token, pin)
        finally:
            listeners.remove(progress)
            if not listeners and self._listeners.get(key) is listeners:
                del self._listeners[key]

    async def _entry_for(self, spec: ModelSpec, key: tuple[str, str], token: str | None, pin: bool) -> Entry:
        for _ in range(8):
            entry = self._entries.get(key)
            if entry is not None and not entry.closing:
                return entry
            if entry is not None:
                await entry.closed.wait()
                continue
            task = self._loading.get(key)
            if task is None:
                task = asyncio.ensure_future(self._load(spec, token, pin))
                self._loading[key] = task
                task.add_done_callback(lambda t, k=key: self._loading.pop(k, None)
                                       if self._loading.get(k) is t else None)
            entry = await asyncio.shield(task)
            if entry.key in self._entries and not entry.closing:
                return entry
        raise Unavailable(f"Model '{spec.requested}' keeps being evicted; retry later.")

    async def _load(self, spec: ModelSpec, token: str | None, pin: bool) -> Entry:
        await asyncio.to_thread(check_category, spec)  # a model of another kind: 400 before anything is evicted
        estimate = await asyncio.to_thread(spec.estimate_bytes)
        key = (spec.key, spec.category)
        await self._make_room(estimate, exclude=key)
        self._reserved += estimate
        started = time.perf_counter()
        try:
            ctx = self._context(spec, token, started)
            ctx.progress(f"loading {spec.category} model")
            loop = asyncio.get_running_loop()
            call = functools.partial(contextvars.copy_context().run, self._load_sync, spec, ctx)  # keeps request id
            model = await loop.run_in_executor(self._load_pool, call)
        except BaseException as exc:
            self._count("model_load_failures_total")
            if isinstance(exc, APIError):
                raise
            if is_out_of_memory(exc):
                raise InsufficientMemory(f"Not enough memory to load model '{spec.requested}'.") from exc
            if isinstance(exc, asyncio.CancelledError):
                raise
            logger.warning("loading %s failed: %s: %s", spec.key, type(exc).__name__, exc)
            first_line = (str(exc).strip().splitlines() or [""])[0][:300]
            raise ModelLoadFailed(f"Model '{spec.requested}' failed to load: {type(exc).__name__}: {first_line}",
                                  param="model") from exc
        finally:
            self._reserved -= estimate
        measured = model.memory_bytes() or estimate
        now = self.clock()
        pinned = pin or self._is_pinned(spec)
        entry = Entry(spec=spec, model=model, bytes=measured, pinned=pinned, loaded_at=now, last_used=now)
        if measured > estimate:
            try:
                await self._make_room(measured - estimate, exclude=key)
            except InsufficientMemory:
                logger.warning("model %s uses more memory than estimated; budget exceeded", spec.key)
        self._entries[key] = entry
        self._count("model_loads_total")
        logger.info("loaded %s [%s] in %.2fs (%.1f MB)", spec.key, spec.category,
                    time.perf_counter() - started, measured / 1e6)
        self._gauge_models()
        return entry

    def _load_sync(self, spec: ModelSpec, ctx: LoadContext) -> BaseModel:
        self.device.configure_threads()
        return build_model(spec, ctx, self.get_loader(spec.category), BUILD_LOCK)

    def _context(self, spec: ModelSpec, token: str | None, started: float | None = None) -> LoadContext:
        key = (spec.key, spec.category)
        report = progress_reporter(spec.key, lambda: list(self._listeners.get(key, ())),
                                   time.perf_counter() if started is None else started)
        return build_context(self.settings, self.device, spec, token, report)

    def _is_pinned(self, spec: ModelSpec) -> bool:
        if spec.options and spec.options.pin:
            return True
        return any(p in (spec.key, spec.requested) for p in self.settings.pinned)

    # ----- eviction ------------------------------------------------------------------------------
    def _lru_idle(self, exclude: tuple[str, str] | None = None) -> Entry | None:
        for entry in self._entries.values():  # oldest first
            if entry.key != exclude and entry.active == 0 and not entry.pinned and not entry.closing:
                return entry
        return None

    @staticmethod
    def _no_room(need: int, budget: int, held: int) -> InsufficientMemory:
        return InsufficientMemory(f"Not enough memory for this model (needs about {need / 1e6:.0f} MB; budget "
                                  f"{budget / 1e6:.0f} MB, {held / 1e6:.0f} MB held by models in use or pinned).")

    async def _make_room(self, need: int, exclude: tuple[str, str] | None = None) -> None:
        budget = self.budget_bytes()
        if budget is not None:  # refuse before evicting anything when evicting every idle model would not do
            freeable = sum(e.bytes for e in self._entries.values()
                           if e.key != exclude and e.active == 0 and not e.pinned and not e.closing)
            freeable += sum(self._freeing.values())
            if self.used_bytes() - freeable + need > budget:
                raise self._no_room(need, budget, self.used_bytes() - freeable)
        while True:
            over_count = len(self._entries) >= self.settings.max_loaded_models
            over_bytes = budget is not None and self.used_bytes() + need > budget
            if not (over_count or over_bytes):
                return
            victim = self._lru_idle(exclude)
            if victim is None:
                if over_bytes and self._freeing:
                    await asyncio.wait(list(self._freeing))  # memory of evicted models is still being freed
                    continue
                if over_bytes:
                    raise self._no_room(need, budget or 0, self.used_bytes())
                return
            # Over the count only: free in the background (a full gc can take most of a second) while the new
            # model loads; over the budget: wait until the memory is really released.
            await self._evict(victim, "memory" if over_bytes else "capacity", background=not over_bytes)

    async def _evict(self, entry: Entry, reason: str, background: bool = False) -> None:
        """Remove an idle entry and free its model; `background` frees without waiting (its bytes still
        count in used_bytes() until the free finishes)."""
        entry.closing = True
        await entry.idle.wait()
        self._entries.pop(entry.key, None)
        if background:
            task = asyncio.create_task(asyncio.to_thread(self._free, entry))
            self._freeing[task] = entry.bytes
            task.add_done_callback(lambda t: self._freeing.pop(t, None))
        else:
            await asyncio.to_thread(self._free, entry)
        entry.closed.set()
        self._count("model_evictions_total")
        self._gauge_models()
        logger.info("unloaded %s [%s] (%s)", entry.spec.key, entry.spec.category, reason)

    def _free(self, entry: Entry) -> None:
        """Close the model and drop the manager's reference. A full gc (0.2-0.8 s once transformers is
        imported) runs only when reference cycles keep the model alive."""
        model = entry.model
        try:
            model.close()
        except Exception:  # noqa: BLE001
            logger.exception("closing %s failed", entry.spec.key)
        # References: entry.model, `model` and getrefcount's argument. Any other holder (usually a reference
        # cycle) means only a full collection can free the weights.
        if sys.getrefcount(model) > 3:
            gc.collect()
        self.device.empty_cache()

    async def unload(self, model: str) -> list[Entry]:
        """Unload every loaded entry for `model`, waiting for running requests; 404 if none is loaded."""
        entries = self.find(model)
        if not entries:
            raise ModelNotFound(f"Model '{model}' is not loaded.")
        for entry in entries:
            entry.pinned = False
            self._given.pop(entry.spec.key, None)
            if not entry.closing:
                await self._evict(entry, "unload")
            else:
                await entry.closed.wait()
        return entries

    async def sweep(self) -> int:
        """Evict idle, unpinned models unused for longer than the idle TTL. Returns how many."""
        ttl = self.settings.idle_ttl_seconds
        if ttl <= 0:
            return 0
        now = self.clock()
        stale = [e for e in self._entries.values()
                 if e.active == 0 and not e.pinned and not e.closing and now - e.last_used >= ttl]
        for entry in stale:
            await self._evict(entry, "idle", background=True)
        return len(stale)

    async def close(self, timeout: float | None = None) -> None:
        """Refuse new work, let running requests finish (bounded), then unload everything."""
        self._shutting_down = True
        entries = self.entries()
        if entries:
            waits = [e.idle.wait() for e in entries]
            try:
                await asyncio.wait_for(asyncio.gather(*waits), timeout)
            except TimeoutError:
                logger.warning("shutdown: requests still running after %.0fs; unloading anyway", timeout or 0)
        for entry in entries:
            entry.active = 0
            entry.idle.set()
            if entry.key in self._entries:
                await self._evict(entry, "shutdown")
        if self._freeing:
            await asyncio.wait(list(self._freeing))
        # a load still running would otherwise go on building in the background after shutdown
        await asyncio.to_thread(self._load_pool.shutdown, wait=True, cancel_futures=True)

    # ----- metrics -------------------------------------------------------------------------------
    def _count(self, name: str) -> None:
        if self.metrics is not None:
            self.metrics.inc(name)

    def _gauge_models(self) -> None:
        if self.metrics is not None:
            self.metrics.set_models({f"{e.spec.key}": e.bytes for e in self._entries.values()})

    def _gauge_queue(self, entry: Entry) -> None:
        if self.metrics is not None:
            self.metrics.set_queue(entry.spec.key, entry.active)
