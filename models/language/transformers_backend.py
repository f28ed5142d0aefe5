"""The transformers backend of the decode engine: a transformers causal LM and its KV cache.

Prompts of one prefill are left-padded together; a new group's KV cache is left-padded to the running
group's length and concatenated on the batch axis; finished rows are dropped with an index select and
all-padding leading columns are trimmed. Every row keeps its own position ids, so a row's greedy output is
the same alone or batched. Models whose cache is not a plain dynamic cache (sliding-window,
linear-attention, hybrid) cannot be merged: the engine then runs each request as its own group.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any


@dataclass
class State:
    """The transformers part of an engine group."""

    cache: Any
    mask: Any  # [B, L] long
    positions: Any  # [B] next position id of each row


def _left_pad(t: Any, length: int, dim: int) -> Any:
    import torch

    missing = length - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


class TransformersBackend:
    """The engine's model calls on a transformers causal LM (`model.forward` with a KV cache)."""

    def __init__(self, model: Any, pad_id: int, device: Any) -> None:
        self.model = model
        self.pad_id = pad_id
        self.device = device
        params = inspect.signature(model.forward).parameters
        self.keep_last = "logits_to_keep" in params
        # transformers >= 5.25 names the KV cache `cache` (`past_key_values` warns, and goes in 5.40); the old
        # name stays only for models whose own forward still takes it (remote code written for older releases).
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.mergeable: bool | None = None

    def prefill(self, prompts: list[list[int]], extra_inputs: dict[str, Any] | None) -> tuple[State, Any]:
        import torch

        length = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), length), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            ids[i, length - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            mask[i, length - len(prompt):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "use_cache": True,
                                  "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
        if self.keep_last:
            kwargs["logits_to_keep"] = 1
        if extra_inputs:
            kwargs.update(extra_inputs)
        out = self.model(**kwargs)
        cache = out[self.cache_kw]
        if self.mergeable is None:
            layers = getattr(cache, "layers", None)
            self.mergeable = bool(layers) and all(type(layer).__name__ == "DynamicLayer" for layer in layers)
        return State(cache=cache, mask=mask, positions=mask.sum(-1)), out.logits[:, -1, :].float()

    def merge(self, a: State, b: State) -> None:
        import torch

        length = max(a.mask.shape[1], b.mask.shape[1])
        for la, lb in zip(a.cache.layers, b.cache.layers, strict=True):
            la.keys = torch.cat([_left_pad(la.keys, length, -2), _left_pad(lb.keys, length, -2)], dim=0)
            la.values = torch.cat([_left_pad(la.values, length, -2), _left_pad(lb.values, length, -2)], dim=0)
        a.mask = torch.cat([_left_pad(a.mask, length, 1), _left_pad(b.mask, length, 1)], dim=0)
        a.positions = torch.cat([a.positions, b.positions])

    def select(self, state: State, keep: list[int]) -> None:
        import torch

        index = torch.tensor(keep, dtype=torch.long, device=state.mask.device)
        state.cache.batch_select_indices(index)
        state.mask = state.mask[index]
        state.positions = state.positions[index]
        used = state.mask.any(0)
        first = int(torch.argmax(used.to(torch.int8)))
        if first > 0 and self.mergeable:
            for layer in state.cache.layers:
                layer.keys = layer.keys[..., first:, :]
                layer.values = layer.values[..., first:, :]
            state.mask = state.mask[:, first:]

    def step(self, state: State, tokens: list[int]) -> Any:
        import torch

        ids = torch.tensor(tokens, dtype=torch.long, device=state.mask.device).unsqueeze(1)
        state.mask = torch.cat([state.mask, state.mask.new_ones((len(tokens), 1))], dim=1)
        out = self.model(input_ids=ids, attention_mask=state.mask, position_ids=state.positions.unsqueeze(1),
                         use_cache=True, **{self.cache_kw: state.cache})
        state.cache = out[self.cache_kw]
        state.positions = state.positions + 1
        return out.logits[:, -1, :].float()

    def release(self, state: State) -> None:
        state.cache = None

    def memory_bytes(self) -> int:
        """Bytes the backend holds besides the weights (dynamic caches live only while a group runs: 0)."""
        return 0
