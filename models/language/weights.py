"""Loading a causal LM's tokenizer and weights: config check, dtype, device, bitsandbytes quantization, and
the GGUF conversion cache."""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Any

from core.contract import LoadContext
from core.errors import InvalidRequest, UnsupportedModelType
from core.resolve import ModelSpec
from models.language import gguf as gguf_cache

logger = logging.getLogger("universal_runtime.language")
ENCODER_SUFFIXES = ("bert", "roberta", "electra", "ernie", "xlm", "xmod", "rembert", "megatron-bert")


def check_causal(config: Any, requested: str) -> None:
    """400 unless the config describes a causal LM transformers can load."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    archs = [str(a) for a in (getattr(config, "architectures", None) or [])]
    causal_arch = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    known = config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    if archs and causal_arch and (known or getattr(config, "auto_map", None)):
        return
    # No architectures recorded (GGUF, hand-written configs): trust the model type, except encoder families
    # that transformers can also run as decoders.
    if not archs and known and not config.model_type.endswith(ENCODER_SUFFIXES):
        return
    kind = archs[0] if archs else config.model_type
    raise UnsupportedModelType(f"Model '{requested}' ({kind}) is not a causal language model; chat and "
                               "completions need one.")


def quantization_config(ctx: LoadContext) -> Any:
    """bitsandbytes config for ctx.options['quantization'] ('8bit' / '4bit'); CUDA only."""
    mode = str(ctx.options.get("quantization") or "none").lower()
    if mode in ("none", "", "false", "no"):
        return None
    if mode not in ("8bit", "4bit"):
        raise InvalidRequest(f"Unknown quantization '{mode}'; use none, 8bit or 4bit.", param="quantization")
    if ctx.device != "cuda":
        raise InvalidRequest(f"{mode} quantization uses bitsandbytes and needs a CUDA device; this model runs "
                             f"on {ctx.device}. Unset quantization for this model.", param="quantization")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise InvalidRequest(f"{mode} quantization needs the bitsandbytes package (pip install bitsandbytes).",
                             param="quantization") from exc
    from transformers import BitsAndBytesConfig

    if mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=ctx.torch_dtype(),
                              bnb_4bit_quant_type="nf4")


def _from_gguf(folder: Path, gguf_file: str, ctx: LoadContext) -> tuple[Path | None, Any, Any]:
    """(converted folder or None, model, tokenizer): loads the GGUF and caches its conversion."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = folder / gguf_file
    hit = gguf_cache.cached(source, ctx.dtype)
    if hit is not None:
        return hit, None, None
    ctx.progress(f"converting {gguf_file} (first load; later loads use the cached conversion)")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=ctx.torch_dtype())
    saved = gguf_cache.save_converted(model, tokenizer, source, ctx.dtype)
    return saved, model, tokenizer


def load_weights(spec: ModelSpec, ctx: LoadContext) -> tuple[Any, Any]:
    """(model, tokenizer) on the context's device, in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if spec.path is None:
        raise UnsupportedModelType(f"Model '{spec.requested}' has no local files.")
    quant = quantization_config(ctx)
    folder, gguf = spec.path, spec.gguf_file
    model = tokenizer = None
    if gguf:
        converted, model, tokenizer = _from_gguf(folder, gguf, ctx)
        if converted is not None and (quant is not None or model is None):
            model = tokenizer = None
            gc.collect()
            folder, gguf = converted, None
    trust = ctx.trust_remote_code
    if model is None:
        config = AutoConfig.from_pretrained(folder, gguf_file=gguf, trust_remote_code=trust)
        check_causal(config, spec.requested)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf, trust_remote_code=trust)
        kwargs: dict[str, Any] = {"dtype": ctx.torch_dtype(), "trust_remote_code": trust}
        if gguf:
            kwargs["gguf_file"] = gguf
        if quant is not None:
            kwargs.update(quantization_config=quant, device_map={"": 0})
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    if quant is None:
        model = model.to(ctx.device)
    model.eval()
    return model, tokenizer
