"""Per-row logits processing and sampling: penalties, grammar masks, temperature / top-k / top-p, logprobs.

Every function works on one row (a 1-D logits vector) so rows of one batch keep their own settings and their
own `torch.Generator` (never the global RNG).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SamplingParams:
    """How one sequence is generated (OpenAI fields plus a few common extensions)."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: bool = False
    top_logprobs: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 1e-5 or self.top_k == 1

    @property
    def penalized(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)


def make_generator(seed: int | None, device: Any) -> Any:
    """A private generator: seeded when asked, else from the OS (the global RNG is never touched)."""
    import torch

    gen = torch.Generator(device=device)
    gen.manual_seed(seed % 2**64 if seed is not None else secrets.randbits(63))  # any int: torch takes [0, 2^64)
    return gen


def apply_penalties(logits: Any, generated: list[int], params: SamplingParams) -> Any:
    """OpenAI presence / frequency penalties and HF repetition penalty over the generated tokens."""
    import torch

    if not generated or not params.penalized:
        return logits
    ids = torch.tensor(generated, device=logits.device)
    counts = torch.bincount(ids, minlength=logits.shape[-1])[: logits.shape[-1]].to(logits.dtype)
    seen = counts > 0
    if params.repetition_penalty != 1.0:
        rp = params.repetition_penalty
        logits = torch.where(seen, torch.where(logits > 0, logits / rp, logits * rp), logits)
        logits = logits.clamp(max=torch.finfo(logits.dtype).max)  # a tiny penalty must not make +inf logits
    return logits - params.frequency_penalty * counts - params.presence_penalty * seen.to(logits.dtype)


def apply_bitmask(logits: Any, bitmask: bytes) -> Any:
    """Set to -inf every token whose bit is 0 in an llguidance bitmask (32 tokens per int32 word)."""
    import torch

    words = torch.frombuffer(bytearray(bitmask), dtype=torch.int32).to(logits.device)
    shifts = torch.arange(32, device=logits.device, dtype=torch.int32)
    allowed = ((words.unsqueeze(-1) >> shifts) & 1).flatten().bool()
    vocab = logits.shape[-1]
    if allowed.numel() < vocab:
        allowed = torch.cat([allowed, allowed.new_zeros(vocab - allowed.numel())])
    return logits.masked_fill(~allowed[:vocab], float("-inf"))


def sample(logits: Any, params: SamplingParams, generator: Any) -> int:
    """Pick the next token of one row: argmax when greedy, else temperature / top-k / top-p sampling."""
    import torch

    if params.greedy:
        return int(torch.argmax(logits))
    logits = logits / params.temperature
    if params.top_k and params.top_k > 0 and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        drop = cumulative - sorted_probs > params.top_p  # keep the smallest set reaching top_p (at least one)
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def token_logprobs(logprobs: Any, token: int, k: int) -> tuple[float, list[tuple[int, float]]]:
    """The chosen token's log-probability and the k most likely alternatives."""
    import torch

    chosen = float(logprobs[token])
    if k <= 0:
        return chosen, []
    values, ids = torch.topk(logprobs, k)
    return chosen, [(int(i), float(v)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]
