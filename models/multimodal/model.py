"""The loader of category "multimodal": image captioning and visual question answering.

The sub-kind is read from the model's own config.json, never from its name:

- `architectures` `BlipForConditionalGeneration` -> BLIP captioning (caption; a question becomes a
  text prompt the caption is conditioned on, and only the continuation is the answer);
- `architectures` `BlipForQuestionAnswering` -> BLIP VQA, called directly (transformers 5 has no VQA
  pipeline); it answers questions only;
- any other `model_type` transformers knows as image-text-to-text (LLaVA, Qwen-VL, SmolVLM, BLIP-2, GIT,
  Pix2Struct, vision-encoder-decoder, ...) -> caption and VQA through models/multimodal/vlm.py (chat template when
  the processor has one);
- anything else -> 400 unsupported_model_type.

`max_length` counts generated tokens (the prompt is not counted); a value above what the model can hold
after its prompt is lowered to fit and reported as clamped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.contract import BaseModel, LoadContext, module_bytes
from core.detect import architectures
from core.registry import require_kind
from core.resolve import ModelSpec
from models.multimodal.vlm import Generated, inputs_to, max_positions, token_budget, vlm_generate, vlm_inputs

CAPTION_INSTRUCTION = "Write a short caption for this image."
QUESTION_PROMPT = "question: {} answer:"  # how a captioning model is conditioned on a question


def detect_kind(config: dict[str, Any]) -> str | None:
    """'blip-caption' | 'blip-vqa' | 'image-text-to-text' | None from a config.json dict."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    archs = architectures(config)
    model_type = str(config.get("model_type", ""))
    if "BlipForQuestionAnswering" in archs:
        return "blip-vqa"
    if "BlipForConditionalGeneration" in archs:
        return "blip-caption"
    if model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES and model_type != "blip":
        return "image-text-to-text"
    return None


def load(spec: ModelSpec, ctx: LoadContext) -> BaseModel:
    """Load a multimodal-category model from its local folder, choosing the class from its config."""
    folder, config, kind = require_kind(spec, ctx, detect_kind)
    cls = {"blip-caption": BlipCaptioner, "blip-vqa": BlipQuestionAnswerer, "image-text-to-text": ImageTextToText}[kind]
    return cls.from_folder(spec.key, ctx, folder)


class MultimodalModel(BaseModel):
    """An image + text -> text model. `caption` and `answer` run on the worker thread (via `run`)."""

    category = "multimodal"
    auto_class = "AutoModelForImageTextToText"

    def __init__(self, model_id: str, ctx: LoadContext, model: Any, processor: Any) -> None:
        super().__init__(model_id, ctx)
        self.model = model
        self.processor = processor
        self.limit = max_positions(model.config)

    @classmethod
    def from_folder(cls, model_id: str, ctx: LoadContext, folder: Path) -> MultimodalModel:
        import transformers

        common = {"trust_remote_code": ctx.trust_remote_code, "token": ctx.token}
        processor = transformers.AutoProcessor.from_pretrained(str(folder), **common)
        model = getattr(transformers, cls.auto_class).from_pretrained(str(folder), dtype=ctx.torch_dtype(), **common)
        return cls(model_id, ctx, model.to(ctx.device).eval(), processor)

    def caption(self, image: Any, prompt: str | None, max_length: int) -> Generated:
        raise NotImplementedError

    def answer(self, image: Any, question: str, max_length: int) -> Generated:
        raise NotImplementedError

    def memory_bytes(self) -> int:
        return module_bytes(self.model)

    def describe(self) -> dict[str, Any]:
        return {"kind": type(self).__name__, "capabilities": sorted(self.capabilities)}

    def close(self) -> None:
        self.model = None
        super().close()


class BlipCaptioner(MultimodalModel):
    """BLIP captioning; a prompt starts the caption, a question conditions it and only the rest is answered."""

    capabilities = frozenset({"caption", "vqa"})
    auto_class = "BlipForConditionalGeneration"

    def _generate(self, image: Any, prompt: str | None, max_length: int, field: str) -> tuple[Any, int, bool]:
        """(generated ids including the prompt, prompt tokens the decoder saw, clamped?)."""
        import torch

        inputs = self.processor(images=image, text=prompt or None, return_tensors="pt")
        # the decoder sees [bos] + the prompt's tokens (BLIP drops the tokenizer's final [SEP])
        used = int(inputs["input_ids"].shape[1]) - 1 if prompt else 1
        budget, clamped = token_budget(max_length, used, self.limit, field)
        with torch.inference_mode():
            out = self.model.generate(**inputs_to(inputs, self.ctx.device, self.model.dtype),
                                      max_new_tokens=budget, do_sample=False)
        return out[0].cpu(), used, clamped

    def _result(self, ids: Any, used: int, clamped: bool) -> Generated:
        text = self.processor.decode(ids, skip_special_tokens=True).strip()
        return Generated(text=text, prompt_tokens=used, completion_tokens=int(ids.shape[0]) - used, clamped=clamped)

    def caption(self, image: Any, prompt: str | None, max_length: int) -> Generated:
        ids, used, clamped = self._generate(image, prompt, max_length, "prompt")
        result = self._result(ids, used, clamped)  # the caption continues (so starts with) the prompt
        return result

    def answer(self, image: Any, question: str, max_length: int) -> Generated:
        ids, used, clamped = self._generate(image, QUESTION_PROMPT.format(question), max_length, "question")
        result = self._result(ids[used:], 0, clamped)
        result.prompt_tokens = used
        return result


class BlipQuestionAnswerer(MultimodalModel):
    """BLIP VQA: the question is encoded with the image, the decoder writes the answer."""

    capabilities = frozenset({"vqa"})
    auto_class = "BlipForQuestionAnswering"

    def answer(self, image: Any, question: str, max_length: int) -> Generated:
        import torch

        inputs = self.processor(images=image, text=question, return_tensors="pt")
        used = int(inputs["input_ids"].shape[1])
        token_budget(1, used - 1, self.limit, "question")  # the question must fit the text encoder
        budget, clamped = token_budget(max_length, 1, self.limit, "max_length")  # the decoder starts at [bos]
        with torch.inference_mode():
            out = self.model.generate(**inputs_to(inputs, self.ctx.device, self.model.dtype),
                                      max_new_tokens=budget, do_sample=False)
        ids = out[0].cpu()
        text = self.processor.decode(ids, skip_special_tokens=True).strip()
        return Generated(text=text, prompt_tokens=used, completion_tokens=int(ids.shape[0]) - 1, clamped=clamped)


class ImageTextToText(MultimodalModel):
    """Any image-text-to-text model: chat-templated instruction or question, greedy generation."""

    capabilities = frozenset({"caption", "vqa"})

    def _run(self, image: Any, text: str, max_length: int, field: str) -> Generated:
        if getattr(self.processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
            inputs = vlm_inputs(self.processor, [image], messages=messages)
        else:
            inputs = vlm_inputs(self.processor, [image], text=text or None)
        used = int(inputs["input_ids"].shape[1]) if "input_ids" in inputs else 0
        budget, clamped = token_budget(max_length, used, self.limit, field)
        return vlm_generate(self.model, self.processor, inputs, budget, clamped=clamped)

    def caption(self, image: Any, prompt: str | None, max_length: int) -> Generated:
        if getattr(self.processor, "chat_template", None):
            return self._run(image, prompt or CAPTION_INSTRUCTION, max_length, "prompt")
        return self._run(image, prompt or "", max_length, "prompt")

    def answer(self, image: Any, question: str, max_length: int) -> Generated:
        if getattr(self.processor, "chat_template", None):
            return self._run(image, question, max_length, "question")
        return self._run(image, f"Question: {question} Answer:", max_length, "question")
