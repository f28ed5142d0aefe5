"""The decode engine: continuous batching, per-row sampling, stop strings, logprobs, grammar constraints and
cancellation, on one dedicated thread per model.

The engine schedules rows and turns logits into text; a backend runs the model: `TransformersBackend`
(transformers_backend.py: a transformers model and its KV cache) or `LlamaCppBackend` (llamacpp.py: a GGUF
model in llama.cpp). New requests join the running batch at step boundaries: the backend prefills them
together into a group, which is merged into the running one when the backend can (`mergeable`); otherwise
each request runs as its own group, and groups advance one token each in turn (fair round-robin). Rows that
finish leave their group at the next step (`select`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

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
    state: Any  # the backend's part (KV cache, sequence ids...)
    logits: Any  # [B, V] float32, next-token logits not consumed yet


class Backend(Protocol):
    """What the engine asks of the model: prefill prompts into a group, advance a group by one token."""

    mergeable: bool | None  # can groups be merged into one batch (None: not known before the first prefill)

    def prefill(self, prompts: list[list[int]], extra_inputs: dict[str, Any] | None) -> tuple[Any, Any]:
        """(group state, last-position logits [B, V] float32) of the prompts."""

    def merge(self, a: Any, b: Any) -> None:
        """Append group b's rows to group a (states only; the engine merges rows and logits)."""

    def select(self, state: Any, keep: list[int]) -> None:
        """Keep only these rows, freeing what the others held."""

    def step(self, state: Any, tokens: list[int]) -> Any:
        """Feed one token per row; the next logits [B, V] float32."""

    def release(self, state: Any) -> None:
        """The group is done (finished, failed or the engine closed): free what it holds."""


class Engine:
    """Schedules every generation of one model on its own thread."""

    def __init__(self, backend: Backend, tokenizer: Any, *, eos_ids: set[int], device: Any = "cpu",
                 max_batch: int = 16, name: str = "model", threads: int | None = None) -> None:
        self.backend = backend
        self.threads = threads  # torch threads of the decode thread (None: the process's)
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.device = device
        self.max_batch = max(1, max_batch)
        self.token_text = TokenText(tokenizer)
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

        if self.threads:
            from models.language.cpu_tuning import use_threads

            use_threads(self.threads)
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
        for group in self._groups:
            self._release(group)
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
            self._release(group)

    def _release(self, group: _Group) -> None:
        try:
            self.backend.release(group.state)
        except Exception as exc:  # noqa: BLE001
            logger.warning("releasing a group failed: %s: %s", type(exc).__name__, exc)

    def _admit(self, requests: list[RowRequest]) -> None:
        live = [r for r in requests if not r.cancel.is_set()]
        for r in requests:
            if r.cancel.is_set():
                self._safe_emit(r, Event(r.index, finish_reason="cancelled", prompt_tokens=len(r.input_ids)))
        mergeable = self.backend.mergeable
        if mergeable is None and live:
            batches = [[live[0]]] + ([live[1:]] if len(live) > 1 else [])
        elif mergeable:
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
            main = self._groups[0] if self.backend.mergeable and self._groups else None
            if main is not None:
                self._merge(main, group)
            else:
                self._groups.append(group)

    def _prefill(self, rows: list[_Row]) -> _Group:
        extra = rows[0].req.extra_inputs if len(rows) == 1 else None
        state, logits = self.backend.prefill([r.req.input_ids for r in rows], extra)
        return _Group(rows=rows, state=state, logits=logits)

    def _merge(self, a: _Group, b: _Group) -> None:
        import torch

        self.backend.merge(a.state, b.state)
        a.logits = torch.cat([a.logits, b.logits])
        a.rows.extend(b.rows)

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
            self._release(group)
            return
        if len(keep) < len(group.rows):
            self.backend.select(group.state, keep)
            group.rows = [group.rows[i] for i in keep]
        group.logits = self.backend.step(group.state, tokens)

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
