"""The loader of category "causal": picks the class that serves a chat model from its own files.

- an image-text-to-text folder (a vision tower + a causal text model) -> `VisionChatLM` (vision_chat.py);
- any other transformers causal LM, a hub id or a GGUF file -> `CausalLM` on weights from weights.py.
"""

from __future__ import annotations

from core.contract import LoadContext
from core.detect import model_config
from core.resolve import ModelSpec
from models.language.model import CausalLM
from models.language.vision_chat import is_vision_chat_config
from models.language.vision_chat import load as load_vision_chat
from models.language.weights import load_weights


def load(spec: ModelSpec, ctx: LoadContext) -> CausalLM:
    """Load a chat model from `spec` with the per-model options of `ctx` (max_batch_size, sampling defaults)."""
    max_batch = int(ctx.options.get("max_batch_size") or 16)
    if spec.gguf_file is None and is_vision_chat_config(model_config(spec.path)):
        lm: CausalLM = load_vision_chat(spec, ctx, max_batch)
    else:
        model, tokenizer = load_weights(spec, ctx)
        lm = CausalLM(spec.key, ctx, model, tokenizer, max_batch=max_batch)
    apply_sampling_defaults(lm, spec, ctx)
    return lm


def apply_sampling_defaults(lm: CausalLM, spec: ModelSpec, ctx: LoadContext) -> None:
    """Per-model sampling defaults (`temperature`, `top_p`, `top_k`) that requests override."""
    if spec.packaged:
        # The packaged default is a 4-bit 135M model: sampled at OpenAI's default temperature 1.0 it rambles,
        # so it decodes greedily unless a request (or the model config) sets a temperature.
        lm.defaults["temperature"] = 0.0
    lm.defaults.update({k: float(ctx.options[k]) for k in ("temperature", "top_p") if ctx.options.get(k) is not None})
    if ctx.options.get("top_k") is not None:
        lm.defaults["top_k"] = int(ctx.options["top_k"])
