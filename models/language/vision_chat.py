"""Vision-language chat: image-text-to-text models (LLaVA-, Idefics/SmolVLM-style) served by the chat engine.

The router decodes the images of `image_url` parts (core/media.py) and passes them in order; the model's
processor renders the conversation with its chat template (plain-text fallback in models/multimodal/vlm.py) and turns
the images into pixel inputs, which reach the engine's prefill only. Everything after the prompt —
batching, sampling, stop strings, streaming, JSON output — is the text engine's (models/language/engine.py).
"""

from __future__ import annotations

import inspect
from typing import Any

from core.contract import LoadContext
from core.errors import InvalidRequest, UnsupportedModelType
from core.resolve import ModelSpec
from models.language import templates as ct
from models.language.model import CausalLM, Prepared
from models.language.structured import response_format_grammar
from models.language.weights import quantization_config
from models.multimodal.vlm import inputs_to, vlm_inputs

IMAGE_PARTS = ("image_url", "input_image", "image")


def is_vision_chat_config(config: dict[str, Any]) -> bool:
    """True for decoder-only image-text-to-text configs (a vision tower plus a causal text model)."""
    archs = [str(a) for a in config.get("architectures") or []]
    return bool(config.get("vision_config")) and bool(config.get("text_config")) and any(
        a.endswith("ForConditionalGeneration") for a in archs)


def _hf_content(content: Any) -> list[dict[str, Any]]:
    """OpenAI content (string or parts) -> processor parts ({"type": "image"} / {"type": "text"})."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    parts: list[dict[str, Any]] = []
    for part in content or []:
        if part.get("type") in IMAGE_PARTS:
            parts.append({"type": "image"})
        elif part.get("type") in ("text", "input_text"):
            parts.append({"type": "text", "text": str(part.get("text", ""))})
    return parts


class VisionChatLM(CausalLM):
    """An image-text-to-text model behind /v1/chat/completions (images as `image_url` parts)."""

    capabilities = frozenset({"chat", "completions", "vision_chat"})
    compilable = False  # image inputs reach the prefill; the compiled backend is for text-only models

    def __init__(self, model_id: str, ctx: LoadContext, model: Any, processor: Any, max_batch: int = 16) -> None:
        super().__init__(model_id, ctx, model, processor.tokenizer, max_batch=max_batch)
        self.processor = processor
        self.template = getattr(processor, "chat_template", None) or self.template

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "sub_kind": "image-text-to-text"}

    def prepare_chat(self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
                     tool_choice: Any = None, response_format: dict[str, Any] | None = None,
                     parallel_tool_calls: bool = True, images: list[Any] | None = None) -> Prepared:
        """Render the conversation with the processor (tools as a system-prompt block written by the runtime);
        pixel inputs go to the prefill only."""
        msgs = ct.normalize(messages, allow_images=True)
        prepared = Prepared(input_ids=[], grammar=response_format_grammar(response_format))
        msgs, _ = self.setup_tools(msgs, prepared, tools, tool_choice, parallel_tool_calls, own=True)
        hf_messages = [{"role": m["role"], "content": _hf_content(m["content"])} for m in msgs]
        wanted = sum(1 for m in hf_messages for p in m["content"] if p["type"] == "image")
        images = list(images or [])
        if wanted != len(images):
            raise InvalidRequest(f"Expected {wanted} decoded images, got {len(images)}.", param="messages")
        batch = vlm_inputs(self.processor, images, messages=hf_messages)
        prepared.input_ids = [int(t) for t in batch["input_ids"][0].tolist()]
        extra = {k: v for k, v in inputs_to(batch, str(self.model.device), self.model.dtype).items()
                 if k not in ("input_ids", "attention_mask", "token_type_ids")}
        prepared.extra_inputs = extra or None
        self._check_length(prepared.input_ids, "messages")
        return prepared


def load(spec: ModelSpec, ctx: LoadContext, max_batch: int = 16) -> VisionChatLM:
    """Load an image-text-to-text model and its processor for chat."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    assert spec.path is not None
    trust = ctx.trust_remote_code
    processor = AutoProcessor.from_pretrained(spec.path, trust_remote_code=trust)
    if getattr(processor, "tokenizer", None) is None:
        raise UnsupportedModelType(f"Model '{spec.requested}' has no tokenizer in its processor; it cannot chat.")
    kwargs: dict[str, Any] = {"dtype": ctx.torch_dtype(), "trust_remote_code": trust}
    quant = quantization_config(ctx)
    if quant is not None:
        kwargs.update(quantization_config=quant, device_map={"": 0})
    model = AutoModelForImageTextToText.from_pretrained(spec.path, **kwargs)
    pixel = inspect.signature(model.forward).parameters.get("pixel_values")
    if pixel is None or pixel.default is inspect.Parameter.empty:
        raise UnsupportedModelType(f"Model '{spec.requested}' ({type(model).__name__}) needs its images at every "
                                   "decoding step; the chat endpoint serves decoder-only vision-language models.")
    if quant is None:
        model = model.to(ctx.device)
    model.eval()
    return VisionChatLM(spec.key, ctx, model, processor, max_batch=max_batch)
