"""The compiled transformers backend (per-model option `compile: true`): decode steps through `torch.compile`
on a static KV cache, compiled once while the model loads.

A static cache has fixed shapes, so one compiled graph serves every decode step of every request. But every
step attends over the whole static cache, used or not: on a CPU that costs more than it saves past a few
hundred positions (SmolLM2-135M fp32, 1 thread: compiled 17.9 tok/s with a 256-position cache, 10 with 2048,
eager `generate` 15.6). So the static cache holds `static_len` positions (the `context_size` option; default
256 on a CPU, 2048 on a GPU, capped by the model's context), and a row that outgrows it moves to a dynamic
cache and goes on eagerly, up to the model's full context; a prompt that does not fit is prefilled eagerly.
Static caches cannot be concatenated on the batch axis, so each row is its own group (`mergeable` False);
they are reset and reused between requests. The load runs a warm-up (a short prefill and two steps) so the
compilation happens there, not in the first request.
"""

from __future__ import annotations

import time
from typing import Any

from models.language.transformers_backend import State, TransformersBackend

STATIC_LEN = {"cpu": 256, "gpu": 2048}  # default positions of one static cache (see above)
KEEP_FREE = 2  # reset caches kept for the next requests


class CompiledBackend(TransformersBackend):
    """`TransformersBackend` with static KV caches and a compiled decode step (one row per group)."""

    def __init__(self, model: Any, pad_id: int, device: Any, static_len: int, mode: str | None = None) -> None:
        import torch

        super().__init__(model, pad_id, device)
        self.mergeable = False
        self.static_len = static_len
        self._free: list[Any] = []
        self.caches = 0  # static caches alive (free or in use)
        self.cache_bytes = 0  # bytes of one
        self._decode = torch.compile(model.forward, dynamic=False, mode=mode)

    def _cache(self) -> Any:
        from transformers import StaticCache

        if self._free:
            return self._free.pop()
        self.caches += 1
        return StaticCache(config=self.model.config, max_cache_len=self.static_len)

    def prefill(self, prompts: list[list[int]], extra_inputs: dict[str, Any] | None) -> tuple[State, Any]:
        import torch

        (prompt,) = prompts  # one row per group
        cache = self._cache() if len(prompt) < self.static_len else None  # None: eager, dynamic cache
        try:
            out = self._forward(self.model, prompt, torch.arange(len(prompt)), cache, extra_inputs)
        except BaseException:
            self.release(State(cache=cache, mask=None, positions=None))
            raise
        if cache is None:
            cache = out[self.cache_kw]
        elif not self.cache_bytes:
            self.cache_bytes = sum(t.numel() * t.element_size() for layer in cache.layers
                                   for t in (layer.keys, layer.values) if t is not None)
        return State(cache=cache, mask=None, positions=len(prompt)), out.logits[:, -1, :].float()

    def _forward(self, fn: Any, tokens: list[int], positions: Any, cache: Any,
                 extra_inputs: dict[str, Any] | None = None) -> Any:
        import torch

        kwargs: dict[str, Any] = {"input_ids": torch.tensor([tokens], dtype=torch.long, device=self.device),
                                  "position_ids": positions.to(self.device).unsqueeze(0), "use_cache": True}
        if cache is not None:
            kwargs[self.cache_kw] = cache
        if self.keep_last:
            kwargs["logits_to_keep"] = 1
        return fn(**kwargs, **(extra_inputs or {}))

    def step(self, state: State, tokens: list[int]) -> Any:
        import torch
        from transformers import StaticCache

        static = isinstance(state.cache, StaticCache)
        if static and state.positions >= self.static_len:
            state.cache, static = self._to_dynamic(state.cache, state.positions), False
        out = self._forward(self._decode if static else self.model, tokens,
                            torch.tensor([state.positions], dtype=torch.long), state.cache)
        if not static:
            state.cache = out[self.cache_kw]
        state.positions += 1
        return out.logits[:, -1, :].float()

    def _to_dynamic(self, cache: Any, used: int) -> Any:
        """A dynamic cache holding the first `used` positions of a full static cache (which goes back to the
        pool)."""
        from transformers import DynamicCache

        dynamic = DynamicCache()
        for i, layer in enumerate(cache.layers):
            dynamic.update(layer.keys[:, :, :used].clone(), layer.values[:, :, :used].clone(), i)
        self.release(State(cache=cache, mask=None, positions=None))
        return dynamic

    def merge(self, a: State, b: State) -> None:
        raise RuntimeError("static caches are not merged")

    def select(self, state: State, keep: list[int]) -> None:
        raise RuntimeError("a compiled group holds one row")

    def release(self, state: State) -> None:
        from transformers import StaticCache

        cache, state.cache = state.cache, None
        if not isinstance(cache, StaticCache):
            return
        if len(self._free) < KEEP_FREE:
            cache.reset()
            self._free.append(cache)
        else:
            self.caches -= 1

    def memory_bytes(self) -> int:
        """Bytes of the static caches alive."""
        return self.caches * self.cache_bytes

    def warm_up(self, token: int) -> float:
        """Compile now (a two-token prefill and two decode steps); returns the seconds it took."""
        import torch

        start = time.perf_counter()
        with torch.inference_mode():
            state, _ = self.prefill([[token, token]], None)
            try:
                for _ in range(2):
                    self.step(state, [token])
            finally:
                self.release(state)
        return time.perf_counter() - start
