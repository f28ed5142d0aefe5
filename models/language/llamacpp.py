"""The llama.cpp backend of the decode engine: a GGUF model run by llama.cpp through llama-cpp-python's
low-level API, with the engine's own sampling, stop strings, logprobs, grammars and tool parsing on top.

Continuous batching as llama-server's parallel slots do it: one llama.cpp context holds `parallel`
sequences, each with its own `context_size` KV cells; every row of the engine owns one sequence id while it
runs. A step is one `llama_decode` of a batch holding one token per running row (each at its own position,
on its own sequence); rows join at step boundaries after their prompt is decoded (in chunks of `n_batch`),
and a finished row's KV cells are cleared and its sequence id reused. The engine samples from the logits
llama.cpp returns for every row, so both engines share every wire behaviour.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("universal_runtime.llamacpp")

DEFAULT_CONTEXT = 2048  # KV cells of one sequence (capped by the model's training context)
DEFAULT_PARALLEL = 8  # sequences decoded together
N_BATCH = 512  # prompt tokens per llama_decode call


@functools.cache
def available() -> str | None:
    """None when llama-cpp-python imports, else why not (for the log line and /health); asked once."""
    try:
        import llama_cpp  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - a broken build raises OSError / ImportError alike
        return f"{type(exc).__name__}: {exc}"
    return None


_LOG_CALLBACK: Any = None


def _quiet_native_logs(llama_cpp: Any) -> None:
    """Route llama.cpp's own log lines (hundreds per load) to our logger at debug level, once per process."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is not None:
        return

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, _user: Any) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s", text.decode("utf-8", "replace").rstrip())

    _LOG_CALLBACK = callback
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


class LlamaCppError(RuntimeError):
    """llama.cpp refused the file or failed a step."""


@dataclass
class Runtime:
    """A loaded GGUF model and its context (one per loaded model; used from the engine thread only)."""

    path: Path
    context_size: int
    parallel: int
    threads: int
    gpu_layers: int = 0
    lib: Any = None
    model: Any = None
    ctx: Any = None
    vocab_size: int = 0
    free_seqs: list[int] = field(default_factory=list)
    _batch: Any = None

    def load(self) -> Runtime:
        import llama_cpp

        _quiet_native_logs(llama_cpp)
        llama_cpp.llama_backend_init()
        self.lib = llama_cpp
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = self.gpu_layers
        self.model = llama_cpp.llama_model_load_from_file(str(self.path).encode(), mparams)
        if not self.model:
            raise LlamaCppError(f"llama.cpp could not load {self.path.name}")
        trained = int(llama_cpp.llama_model_n_ctx_train(self.model)) or self.context_size
        self.context_size = max(16, min(self.context_size, trained))
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = self.context_size * self.parallel
        cparams.n_seq_max = self.parallel
        cparams.n_batch = cparams.n_ubatch = N_BATCH
        cparams.n_threads = cparams.n_threads_batch = self.threads
        cparams.kv_unified = False  # every sequence has its own `context_size` cells: one row never starves another
        cparams.no_perf = True
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            self.close()
            raise LlamaCppError(f"llama.cpp could not create a context of {cparams.n_ctx} tokens for {self.path.name}")
        self.vocab_size = int(llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model)))
        self.free_seqs = list(range(self.parallel))
        return self

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(4096)
        n = self.lib.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    def describe(self) -> str:
        """llama.cpp's one-line description of the weights, e.g. `llama 135M Q4_1`."""
        buf = ctypes.create_string_buffer(256)
        self.lib.llama_model_desc(self.model, buf, len(buf))
        return buf.value.decode("utf-8", "replace")

    def eog_tokens(self) -> set[int]:
        vocab = self.lib.llama_model_get_vocab(self.model)
        return {t for t in range(self.vocab_size) if self.lib.llama_vocab_is_eog(vocab, t)} \
            if self.vocab_size <= 300_000 else {int(self.lib.llama_vocab_eos(vocab))}

    def kv_bytes(self) -> int:
        """Bytes of the KV cache this context allocated (f16 keys and values, every sequence)."""
        lib, m = self.lib, self.model
        head = int(lib.llama_model_n_embd(m)) // max(1, int(lib.llama_model_n_head(m)))
        per_token = 2 * int(lib.llama_model_n_layer(m)) * head * int(lib.llama_model_n_head_kv(m)) * 2
        return per_token * self.context_size * self.parallel

    def file_bytes(self) -> int:
        return int(self.lib.llama_model_size(self.model)) if self.model else 0

    def close(self) -> None:
        if self._batch is not None:
            self.lib.llama_batch_free(self._batch)
            self._batch = None
        if self.ctx:
            self.lib.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            self.lib.llama_model_free(self.model)
            self.model = None

    # ----- sequences and decoding (engine thread) --------------------------------------------------
    def take_seq(self) -> int:
        if not self.free_seqs:
            raise LlamaCppError("no free sequence (more rows than `parallel`)")
        return self.free_seqs.pop(0)

    def free_seq(self, seq: int) -> None:
        self.lib.llama_memory_seq_rm(self.lib.llama_get_memory(self.ctx), seq, -1, -1)
        self.free_seqs.append(seq)

    def decode(self, tokens: list[tuple[int, int, int, bool]]) -> Any:
        """Decode (token, position, sequence id, wants logits) entries in chunks of N_BATCH; returns the
        logits of the entries that want them, in order, as a float32 torch tensor [n, vocab]."""
        import numpy as np
        import torch

        lib = self.lib
        if self._batch is None:  # one batch, reused by every call (this thread only)
            self._batch = lib.llama_batch_init(max(N_BATCH, self.parallel), 0, 1)
        batch = self._batch
        out: list[Any] = []
        for start in range(0, len(tokens), N_BATCH):
            chunk = tokens[start:start + N_BATCH]
            wanted = 0
            for i, (tok, pos, seq, logits) in enumerate(chunk):
                batch.token[i] = tok
                batch.pos[i] = pos
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = seq
                batch.logits[i] = logits
                wanted += logits
            batch.n_tokens = len(chunk)
            code = lib.llama_decode(self.ctx, batch)
            if code != 0:
                raise LlamaCppError(f"llama_decode failed (code {code})")
            if wanted:
                size = wanted * self.vocab_size
                buffer = (ctypes.c_float * size).from_address(ctypes.addressof(lib.llama_get_logits(self.ctx).contents))
                out.append(torch.from_numpy(np.frombuffer(buffer, dtype=np.float32, count=size).copy())
                           .view(wanted, self.vocab_size))
        return torch.cat(out) if len(out) > 1 else out[0]


@dataclass
class State:
    """The llama.cpp part of an engine group: each row's sequence id and next position."""

    seqs: list[int]
    positions: list[int]


class LlamaCppBackend:
    """The engine's model calls on llama.cpp: every group shares the one context, so groups always merge."""

    mergeable = True

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def prefill(self, prompts: list[list[int]], extra_inputs: dict[str, Any] | None) -> tuple[State, Any]:
        seqs: list[int] = []
        try:
            entries: list[tuple[int, int, int, bool]] = []
            for ids in prompts:
                seq = self.rt.take_seq()
                seqs.append(seq)
                entries += [(t, p, seq, p == len(ids) - 1) for p, t in enumerate(ids)]
            logits = self.rt.decode(entries)
        except BaseException:
            for seq in seqs:
                self.rt.free_seq(seq)
            raise
        return State(seqs, [len(ids) for ids in prompts]), logits

    def merge(self, a: State, b: State) -> None:
        a.seqs += b.seqs
        a.positions += b.positions

    def select(self, state: State, keep: list[int]) -> None:
        kept = set(keep)
        for i, seq in enumerate(state.seqs):
            if i not in kept:
                self.rt.free_seq(seq)
        state.seqs = [state.seqs[i] for i in keep]
        state.positions = [state.positions[i] for i in keep]

    def step(self, state: State, tokens: list[int]) -> Any:
        logits = self.rt.decode([(t, p, s, True) for t, p, s in zip(tokens, state.positions, state.seqs,
                                                                       strict=True)])
        state.positions = [p + 1 for p in state.positions]
        return logits

    def release(self, state: State) -> None:
        for seq in state.seqs:
            self.rt.free_seq(seq)
        state.seqs, state.positions = [], []
