"""`LlamaCppLM`: a GGUF chat model served by the llama.cpp backend, with the same prompts, sampling, tools and
grammars as the transformers engine (the category class's own code; only the model calls differ)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.contract import BaseModel, LoadContext
from core.device import physical_cores
from models.language.engine import Engine
from models.language.gguf import tokenizer_for
from models.language.llamacpp import DEFAULT_CONTEXT, DEFAULT_PARALLEL, LlamaCppBackend, Runtime
from models.language.model import CausalLM


class LlamaCppLM(CausalLM):
    """A GGUF model in llama.cpp: `parallel` sequences of `context_size` tokens each, decoded together."""

    engine_name = "llama.cpp"

    def __init__(self, model_id: str, ctx: LoadContext, runtime: Runtime, tokenizer: Any) -> None:
        BaseModel.__init__(self, model_id, ctx)
        self.model = None
        self.config = None
        self.runtime = runtime
        eos = runtime.eog_tokens()
        if tokenizer.eos_token_id is not None:
            eos.add(int(tokenizer.eos_token_id))
        self.setup(tokenizer, eos, runtime.vocab_size, runtime.context_size)
        self.engine = Engine(LlamaCppBackend(runtime), tokenizer, eos_ids=eos, device="cpu",
                             max_batch=runtime.parallel, name=model_id.rsplit("/", 1)[-1])

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "architecture": self.runtime.meta("general.architecture"),
                "dtype": self.runtime.describe(), "parallel": self.runtime.parallel, "threads": self.runtime.threads}

    def memory_bytes(self) -> int:
        """The mapped GGUF weights plus the KV cache the context allocated."""
        return self.runtime.file_bytes() + self.runtime.kv_bytes()

    def close(self) -> None:
        self.engine.close()  # joins the decode thread before the context goes
        self.runtime.close()
        BaseModel.close(self)


def load(path: Path, model_id: str, ctx: LoadContext) -> LlamaCppLM:
    """Load a GGUF file into llama.cpp with the per-model options `context_size`, `parallel`, `threads`."""
    opts = ctx.options
    gpu = str(ctx.device).startswith(("cuda", "mps"))
    runtime = Runtime(path=path, context_size=int(opts.get("context_size") or DEFAULT_CONTEXT),
                      parallel=int(opts.get("parallel") or DEFAULT_PARALLEL),
                      threads=int(opts.get("threads") or physical_cores()), gpu_layers=999 if gpu else 0)
    ctx.progress(f"engine llama.cpp: {runtime.threads} threads, {runtime.parallel} sequences of "
                 f"{runtime.context_size} tokens{', on the GPU' if gpu else ''}")
    runtime.load()
    try:
        tokenizer = tokenizer_for(path)
        return LlamaCppLM(model_id, ctx, runtime, tokenizer)
    except BaseException:
        runtime.close()
        raise
