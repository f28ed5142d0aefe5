"""The decode engine: continuous batching over one KV cache, per-row sampling, stop strings, logprobs,
grammar constraints and cancellation, on one dedicated thread per model.

New requests join the running batch at step boundaries: they are prefilled together (left-padded), then
their KV cache is left-padded to the running batch's length and concatenated on the batch axis; finished
rows are dropped with an index select and all-padding leading columns are trimmed. Every row keeps its own
position ids, so a row's greedy output is the same alone or batched. Models whose cache is not a plain
dynamic cache (sliding-window, linear-attention, hybrid) cannot be merged: each request then runs as its own
group, and groups advance one token each in turn (fair round-robin).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.logs import request_id_var
from models.language.detokenize import IncrementalDecoder, StopMatcher, TokenText
from models.language.sampling import (
    SamplingParams,
    apply_bitmask,
    apply_penalties,
    make_generator,
    sample,
    token_logprobs,
)

logger = logging.getLogger("universal_runtime.generation")


@dataclass
class TokenLogprob:
    """One generated token's log-probability, in OpenAI's terms."""

    token: str
    logprob: float
    bytes: list[int]
    top: list[tuple[str, float, list[int]]] = field(default_factory=list)


@dataclass
class Event:
    """What the engine reports for one row: a piece of text, or the end (finish_reason set)."""

    index: int
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None  # stop | length | cancelled | error
    completion_tokens: int = 0
    prompt_tokens: int = 0
    ttft: float | None = None
    error: BaseException | None = None
    tool_calls: list[Any] = field(default_factory=list)  # set by tool parsing on the finish event


@dataclass
class RowRequest:
    """One sequence to generate. `emit` is called on the engine thread; `extra_inputs` (e.g. pixel values of
    a vision-language model) are passed to the prefill forward only."""

    input_ids: list[int]
    params: SamplingParams
    emit: Callable[[Event], None]
    index: int = 0
    cancel: threading.Event = field(default_factory=threading.Event)
    matcher: Any = None
    extra_inputs: dict[str, Any] | None = None
    submitted: float = field(default_factory=time.perf_counter)
    request_id: str = field(default_factory=request_id_var.get)  # for the engine thread's log lines


def _ids(requests: list[RowRequest]) -> str:
    return ",".join(dict.fromkeys(r.request_id for r in requests)) or "-"


class _Row:
    def __init__(self, req: RowRequest, engine: Engine) -> None:
        self.req = req
        self.p = req.params
        self.generated: list[int] = []
        self.gen = make_generator(req.params.seed, engine.device) if not req.params.greedy else None
        self.decoder = IncrementalDecoder(engine.tokenizer)
        self.stopper = StopMatcher(req.params.stop)
        self.text_len = 0
        self.emitted_len = 0
        self.pending_lp: list[tuple[int, TokenLogprob]] = []
        self.ttft: float | None = None


@dataclass
class _Group:
    rows: list[_Row]
    cache: Any
    mask: Any  # [B, L] long
    positions: Any  # [B] next position id of each row
    logits: Any  # [B, V] float32, next-token logits not consumed yet


def _left_pad(t: Any, length: int, dim: int) -> Any:
    import torch

    missing = length - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


class Engine:
    """Schedules every generation of one model on its own thread."""

    def __init__(self, model: Any, tokenizer: Any, *, eos_ids: set[int], pad_id: int, device: Any,
                 max_batch: int = 16, name: str = "model") -> None:
        import inspect

        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.pad_id = pad_id
        self.device = device
        self.max_batch = max(1, max_batch)
        self.token_text = TokenText(tokenizer)
        params = inspect.signature(model.forward).parameters
        self.keep_last = "logits_to_keep" in params
        # transformers >= 5.25 names the KV cache `cache` (`past_key_values` warns, and goes in 5.40); the old
        # name stays only for models whose own forward still takes it (remote code written for older releases).
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.mergeable: bool | None = None
        self.history: deque[tuple[RowRequest, str, int]] = deque(maxlen=256)  # finished rows, for tests
        self._pending: deque[RowRequest] = deque()
        self._groups: list[_Group] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._name = name

    # ----- public --------------------------------------------------------------------------------
    def submit(self, requests: list[RowRequest]) -> None:
        """Queue rows; they join the running batch at the next step boundary."""
        with self._cond:
            if self._closed:
                raise RuntimeError("engine closed")
            self._pending.extend(requests)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"decode-{self._name}", daemon=True)
                self._thread.start()
            self._cond.notify()

    def active_rows(self) -> int:
        return sum(len(g.rows) for g in self._groups)

    def close(self) -> None:
        """Stop the thread; rows still running end with an error event."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    # ----- the loop ------------------------------------------------------------------------------
    def _run(self) -> None:
        import torch

        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._closed and not self._pending and not self._groups:
                        self._cond.wait()
                    if self._closed:
                        break
                    room = self.max_batch - self.active_rows()
                    admitted = [self._pending.popleft() for _ in range(min(room, len(self._pending)))]
                if admitted:
                    self._admit(admitted)
                for group in list(self._groups):
                    self._guarded(group, self._step)
        from core.errors import Unavailable

        for req in list(self._pending) + [r.req for g in self._groups for r in g.rows]:
            self._safe_emit(req, Event(req.index, finish_reason="error", error=Unavailable("Model unloaded.")))
        self._pending.clear()
        self._groups.clear()

    def _guarded(self, group: _Group, fn: Callable[[_Group], None]) -> None:
        try:
            fn(group)
        except Exception as exc:  # noqa: BLE001 - a failing batch must not kill the engine
            logger.warning("generation failed (requests %s): %s: %s", _ids([r.req for r in group.rows]),
                           type(exc).__name__, exc)
            for row in group.rows:
                self._finish(row, "error", error=exc)
            if group in self._groups:
                self._groups.remove(group)

    def _admit(self, requests: list[RowRequest]) -> None:
        live = [r for r in requests if not r.cancel.is_set()]
        for r in requests:
            if r.cancel.is_set():
                self._safe_emit(r, Event(r.index, finish_reason="cancelled", prompt_tokens=len(r.input_ids)))
        if self.mergeable is None and live:
            batches = [[live[0]]] + ([live[1:]] if len(live) > 1 else [])
        elif self.mergeable:
            plain = [r for r in live if not r.extra_inputs]
            batches = ([plain] if plain else []) + [[r] for r in live if r.extra_inputs]
        else:
            batches = [[r] for r in live]
        for batch in batches:
            rows: list[_Row] = []
            try:
                for r in batch:  # row set-up (e.g. seeding its generator) can fail too: never kill the engine
                    rows.append(_Row(r, self))
                group = self._prefill(rows)
            except Exception as exc:  # noqa: BLE001
                logger.warning("prefill failed (requests %s): %s: %s", _ids(batch), type(exc).__name__, exc)
                for row in rows:
                    self._finish(row, "error", error=exc)
                for r in batch[len(rows):]:
                    self._safe_emit(r, Event(r.index, finish_reason="error", error=exc,
                                             prompt_tokens=len(r.input_ids)))
                continue
            main = self._groups[0] if self.mergeable and self._groups else None
            if main is not None:
                self._merge(main, group)
            else:
                self._groups.append(group)

    def _prefill(self, rows: list[_Row]) -> _Group:
        import torch

        length = max(len(r.req.input_ids) for r in rows)
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row.req.input_ids)
            ids[i, length - n:] = torch.tensor(row.req.input_ids, dtype=torch.long)
            mask[i, length - n:] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "use_cache": True,
                                  "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
        if self.keep_last:
            kwargs["logits_to_keep"] = 1
        if len(rows) == 1 and rows[0].req.extra_inputs:
            kwargs.update(rows[0].req.extra_inputs)
        out = self.model(**kwargs)
        cache = out[self.cache_kw]
        if self.mergeable is None:
            layers = getattr(cache, "layers", None)
            self.mergeable = bool(layers) and all(type(layer).__name__ == "DynamicLayer" for layer in layers)
        return _Group(rows=rows, cache=cache, mask=mask, positions=mask.sum(-1),
                      logits=out.logits[:, -1, :].float())

    def _merge(self, a: _Group, b: _Group) -> None:
        import torch

        length = max(a.mask.shape[1], b.mask.shape[1])
        for la, lb in zip(a.cache.layers, b.cache.layers, strict=True):
            la.keys = torch.cat([_left_pad(la.keys, length, -2), _left_pad(lb.keys, length, -2)], dim=0)
            la.values = torch.cat([_left_pad(la.values, length, -2), _left_pad(lb.values, length, -2)], dim=0)
        a.mask = torch.cat([_left_pad(a.mask, length, 1), _left_pad(b.mask, length, 1)], dim=0)
        a.positions = torch.cat([a.positions, b.positions])
        a.logits = torch.cat([a.logits, b.logits])
        a.rows.extend(b.rows)

    def _select(self, group: _Group, keep: list[int]) -> None:
        import torch

        index = torch.tensor(keep, dtype=torch.long, device=group.mask.device)
        group.cache.batch_select_indices(index)
        group.mask = group.mask[index]
        group.positions = group.positions[index]
        group.rows = [group.rows[i] for i in keep]
        used = group.mask.any(0)
        first = int(torch.argmax(used.to(torch.int8)))
        if first > 0 and self.mergeable:
            for layer in group.cache.layers:
                layer.keys = layer.keys[..., first:, :]
                layer.values = layer.values[..., first:, :]
            group.mask = group.mask[:, first:]

    def _step(self, group: _Group) -> None:
        """Sample one token for every row of the group, then run the forward pass for the next one."""
        import torch

        logprobs = torch.log_softmax(group.logits, dim=-1) if any(r.p.logprobs for r in group.rows) else None
        keep: list[int] = []
        tokens: list[int] = []
        for i, row in enumerate(group.rows):
            if row.req.cancel.is_set():
                self._finish(row, "cancelled")
                continue
            reason = self._advance(row, group.logits[i], None if logprobs is None else logprobs[i])
            if reason is not None:
                self._finish(row, reason)
            else:
                keep.append(i)
                tokens.append(row.generated[-1])
        if not keep:
            self._groups.remove(group)
            return
        if len(keep) < len(group.rows):
            self._select(group, keep)
        ids = torch.tensor(tokens, dtype=torch.long, device=group.mask.device).unsqueeze(1)
        group.mask = torch.cat([group.mask, group.mask.new_ones((len(keep), 1))], dim=1)
        out = self.model(input_ids=ids, attention_mask=group.mask, position_ids=group.positions.unsqueeze(1),
                         use_cache=True, **{self.cache_kw: group.cache})
        group.cache = out[self.cache_kw]
        group.logits = out.logits[:, -1, :].float()
        group.positions = group.positions + 1

    def _advance(self, row: _Row, logits: Any, logprobs: Any) -> str | None:
        """Pick a token for one row and account for it; returns a finish reason when the row is done."""
        matcher = row.req.matcher
        if matcher is not None and matcher.is_stopped():
            return self._end(row, "stop")
        logits = apply_penalties(logits, row.generated, row.p)
        if matcher is not None:
            logits = apply_bitmask(logits, matcher.compute_bitmask())
        token = sample(logits, row.p, row.gen)
        if row.ttft is None:
            row.ttft = time.perf_counter() - row.req.submitted
        if matcher is not None and not matcher.consume_token(token):
            logger.warning("grammar rejected token %d (request %s): %s", token, row.req.request_id,
                           matcher.get_error())
        if token in self.eos_ids:
            return self._end(row, "stop")
        row.generated.append(token)
        if logprobs is not None:
            row.pending_lp.append((row.text_len, self._logprob(logprobs, token, row.p.top_logprobs)))
        piece = row.decoder.push(token)
        row.text_len += len(piece)
        out, hit = row.stopper.feed(piece)
        self._emit_text(row, out)
        if hit:
            row.pending_lp = [e for e in row.pending_lp if e[0] < row.emitted_len]
            return self._end(row, "stop", flush=False)
        if len(row.generated) >= row.p.max_new_tokens:
            return self._end(row, "length")
        if matcher is not None and matcher.is_stopped():
            return self._end(row, "stop")
        return None

    def _logprob(self, logprobs: Any, token: int, k: int) -> TokenLogprob:
        chosen, top = token_logprobs(logprobs, token, k)
        text, raw = self.token_text(token)
        alternatives = []
        for alt, lp in top:
            alt_text, alt_raw = self.token_text(alt)
            alternatives.append((alt_text, lp, alt_raw))
        return TokenLogprob(text, chosen, raw, alternatives)

    def _emit_text(self, row: _Row, text: str, final: bool = False) -> None:
        row.emitted_len += len(text)
        ready = [e for s, e in row.pending_lp if final or s < row.emitted_len]
        row.pending_lp = [] if final else [(s, e) for s, e in row.pending_lp if s >= row.emitted_len]
        if text or ready:
            self._safe_emit(row.req, Event(row.req.index, text=text, logprobs=ready))

    def _end(self, row: _Row, reason: str, flush: bool = True) -> str:
        if not flush:
            self._emit_text(row, "", final=True)
            return reason
        tail = row.decoder.flush()
        out, hit = row.stopper.feed(tail) if tail else ("", False)
        if hit:
            row.pending_lp = [e for e in row.pending_lp if e[0] < row.emitted_len + len(out)]
        self._emit_text(row, out + ("" if hit else row.stopper.flush()), final=True)
        return "stop" if hit else reason

    def _finish(self, row: _Row, reason: str, error: BaseException | None = None) -> None:
        self.history.append((row.req, reason, len(row.generated)))
        self._safe_emit(row.req, Event(row.req.index, finish_reason=reason, completion_tokens=len(row.generated),
                                       prompt_tokens=len(row.req.input_ids), ttft=row.ttft, error=error))

    @staticmethod
    def _safe_emit(req: RowRequest, event: Event) -> None:
        try:
            req.emit(event)
        except Exception:  # noqa: BLE001 - the receiver is gone: stop this row
            req.cancel.set()
