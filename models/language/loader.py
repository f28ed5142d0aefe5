"""The loader of category "causal": picks the engine and the class that serve a chat model from its files.

- a GGUF file -> `LlamaCppLM` (llamacpp_model.py) when the per-model option `engine` is `auto` (the default)
  or `llama.cpp` and llama-cpp-python imports; else, or when llama.cpp refuses the file under `auto`, the
  transformers engine on the de-quantized weights. One progress line (logged) says which engine and why.
- an image-text-to-text folder (a vision tower + a causal text model) -> `VisionChatLM` (vision_chat.py);
- any other transformers causal LM or hub id -> `CausalLM` on weights from weights.py.
"""

from __future__ import annotations

from core.contract import LoadContext
from core.detect import model_config
from core.errors import InvalidRequest, UnsupportedModelType
from core.resolve import ModelSpec
from models.language import llamacpp
from models.language.model import CausalLM
from models.language.vision_chat import is_vision_chat_config
from models.language.vision_chat import load as load_vision_chat
from models.language.weights import load_weights

ENGINES = ("auto", "llama.cpp", "transformers")


def load(spec: ModelSpec, ctx: LoadContext) -> CausalLM:
    """Load a chat model from `spec` with the per-model options of `ctx` (engine, max_batch_size, sampling
    defaults, and for llama.cpp context_size, parallel, threads)."""
    why = _llamacpp_refused(spec, ctx)
    lm = _load_llamacpp(spec, ctx) if why is None else None
    if lm is None:
        if spec.gguf_file is not None:
            ctx.progress(f"engine transformers on {ctx.device} ({ctx.dtype}): {why or 'llama.cpp refused the file'}")
        max_batch = int(ctx.options.get("max_batch_size") or 16)
        if spec.gguf_file is None and is_vision_chat_config(model_config(spec.path)):
            lm = load_vision_chat(spec, ctx, max_batch)
        else:
            model, tokenizer = load_weights(spec, ctx)
            lm = CausalLM(spec.key, ctx, model, tokenizer, max_batch=max_batch)
    apply_sampling_defaults(lm, spec, ctx)
    return lm


def _llamacpp_refused(spec: ModelSpec, ctx: LoadContext) -> str | None:
    """None when llama.cpp should serve the model, else why not; 400 for an `engine` that cannot be had."""
    engine = str(ctx.options.get("engine") or "auto")
    quantization = ctx.options.get("quantization")
    if engine not in ENGINES:
        raise InvalidRequest(f"Unknown engine '{engine}'; one of {', '.join(ENGINES)}.", param="engine")
    if engine == "transformers":
        return "asked for in the model's options"
    if spec.gguf_file is None or spec.path is None:
        if engine == "llama.cpp":
            raise InvalidRequest(f"engine llama.cpp needs a GGUF file; '{spec.requested}' is a transformers "
                                 "model.", param="engine")
        return "not a GGUF file"
    missing = llamacpp.available()
    if missing is not None:
        if engine == "llama.cpp":
            raise InvalidRequest(f"engine llama.cpp is not available in this install ({missing}).", param="engine")
        return f"llama-cpp-python is not available ({missing})"
    if quantization not in (None, "none"):
        if engine == "llama.cpp":
            raise InvalidRequest(f"quantization {quantization} is a transformers option; a GGUF file in llama.cpp "
                                 "keeps its own quantization (drop `quantization` or use engine transformers).",
                                 param="quantization")
        return f"quantization {quantization} is a transformers option"
    return None


def _load_llamacpp(spec: ModelSpec, ctx: LoadContext) -> CausalLM | None:
    """The model in llama.cpp; None (fall back to transformers) when llama.cpp refuses it under `auto`."""
    from models.language.llamacpp_model import load as load_gguf

    assert spec.path is not None and spec.gguf_file is not None
    try:
        return load_gguf(spec.path / spec.gguf_file, spec.key, ctx)
    except llamacpp.LlamaCppError as exc:
        if ctx.options.get("engine") == "llama.cpp":
            raise UnsupportedModelType(f"llama.cpp cannot load '{spec.requested}' ({exc}); try engine "
                                       "transformers.") from None
        ctx.progress(f"llama.cpp refused {spec.gguf_file} ({exc})")
        return None


def apply_sampling_defaults(lm: CausalLM, spec: ModelSpec, ctx: LoadContext) -> None:
    """Per-model sampling defaults (`temperature`, `top_p`, `top_k`) that requests override."""
    if spec.packaged:
        # The packaged default is a 4-bit 135M model: sampled at OpenAI's default temperature 1.0 it rambles,
        # so it decodes greedily unless a request (or the model config) sets a temperature.
        lm.defaults["temperature"] = 0.0
    lm.defaults.update({k: float(ctx.options[k]) for k in ("temperature", "top_p") if ctx.options.get(k) is not None})
    if ctx.options.get("top_k") is not None:
        lm.defaults["top_k"] = int(ctx.options["top_k"])
