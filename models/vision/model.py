"""The loader of category "vision": image classifiers and CLIP/SigLIP-style zero-shot classifiers.

The sub-kind is read from the model's own config.json, never from its name:

- `model_type` is a dual encoder transformers knows for zero-shot image classification (clip, siglip,
  siglip2, align, chinese_clip, ...) and `architectures` names that dual-encoder class (or none), or the
  config carries both a `text_config` and a `vision_config` and its architectures are bare `*Model`
  classes -> zero-shot ("clip");
- `architectures` containing `*ForImageClassification*` -> classifier ("classify_image");
- anything else -> 400 unsupported_model_type.

Both kinds expose one batched function (a list of items -> one result per item, same order) for the
encoder micro-batcher of core/batching.py; each result is every label with its score, sorted descending.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.contract import BaseModel, LoadContext, module_bytes
from core.detect import architectures
from core.errors import UnsupportedModelType
from core.registry import require_kind
from core.resolve import ModelSpec
from models.multimodal.vlm import inputs_to

Scored = list[tuple[str, float]]
SIGLIP_TYPES = ("siglip", "siglip2")  # trained with texts padded to 64 tokens (as transformers' pipeline)


def detect_kind(config: dict[str, Any]) -> str | None:
    """'clip' | 'classifier' | None from a config.json dict."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES

    model_type = str(config.get("model_type", ""))
    archs = architectures(config)
    zero_shot_class = MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES.get(model_type)
    if zero_shot_class and (not archs and model_type != "blip" or zero_shot_class in archs):
        return "clip"
    if any("ForImageClassification" in a for a in archs):
        return "classifier"
    if "text_config" in config and "vision_config" in config and archs and \
            all(a.endswith("Model") for a in archs):
        return "clip"
    return None


def load(spec: ModelSpec, ctx: LoadContext) -> BaseModel:
    """Load a vision-category model from its local folder, choosing the class from its config."""
    folder, config, kind = require_kind(spec, ctx, detect_kind)
    if kind == "clip":
        return ZeroShotImageModel.from_folder(spec.key, ctx, folder, str(config.get("model_type", "")))
    return ImageClassifier.from_folder(spec.key, ctx, folder)


def _common(ctx: LoadContext) -> dict[str, Any]:
    return {"dtype": ctx.torch_dtype(), "trust_remote_code": ctx.trust_remote_code, "token": ctx.token}


class ImageClassifier(BaseModel):
    """An `AutoModelForImageClassification` model: labels from `id2label`, softmax (sigmoid if multi-label)."""

    category = "vision"
    capabilities = frozenset({"classify_image"})

    def __init__(self, model_id: str, ctx: LoadContext, model: Any, processor: Any) -> None:
        super().__init__(model_id, ctx)
        self.model = model
        self.processor = processor
        config = model.config
        self.labels = [str(config.id2label.get(i, f"LABEL_{i}")) for i in range(int(config.num_labels))]
        self.multi_label = config.problem_type == "multi_label_classification"

    @classmethod
    def from_folder(cls, model_id: str, ctx: LoadContext, folder: Path) -> ImageClassifier:
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        processor = AutoImageProcessor.from_pretrained(str(folder), trust_remote_code=ctx.trust_remote_code,
                                                       token=ctx.token)
        model = AutoModelForImageClassification.from_pretrained(str(folder), **_common(ctx))
        return cls(model_id, ctx, model.to(ctx.device).eval(), processor)

    def classify_batch(self, images: list[Any]) -> list[Scored]:
        """PIL images -> for each, every label with its score, best first. Runs on the worker thread."""
        import torch

        inputs = inputs_to(self.processor(images=images, return_tensors="pt"), self.ctx.device, self.model.dtype)
        with torch.inference_mode():
            logits = self.model(**inputs).logits.float()
        probs = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)
        return [_ranked(self.labels, row.tolist()) for row in probs.cpu()]

    def memory_bytes(self) -> int:
        return module_bytes(self.model)

    def describe(self) -> dict[str, Any]:
        return {"kind": "image-classifier", "num_labels": len(self.labels), "multi_label": self.multi_label}

    def close(self) -> None:
        self.model = None
        super().close()


class ZeroShotImageModel(BaseModel):
    """A CLIP/SigLIP-style dual encoder: scores are a softmax over the candidate labels' logits (sum to 1).

    SigLIP's logits are sigmoid-calibrated, but their softmax across the labels equals the sigmoid
    probabilities normalised by the partition, ordered the same; it is used for every dual encoder so the
    scores of one request always sum to 1 as the API promises.
    """

    category = "vision"
    capabilities = frozenset({"clip"})

    def __init__(self, model_id: str, ctx: LoadContext, model: Any, processor: Any, model_type: str) -> None:
        super().__init__(model_id, ctx)
        self.model = model
        self.processor = processor
        self.model_type = model_type
        self.tokenizer = getattr(processor, "tokenizer", None)
        self.image_processor = getattr(processor, "image_processor", None)
        if self.tokenizer is None or self.image_processor is None:
            raise UnsupportedModelType("This zero-shot model's processor lacks a tokenizer or an image processor.")

    @classmethod
    def from_folder(cls, model_id: str, ctx: LoadContext, folder: Path, model_type: str) -> ZeroShotImageModel:
        from transformers import AutoModel, AutoModelForZeroShotImageClassification, AutoProcessor

        processor = AutoProcessor.from_pretrained(str(folder), trust_remote_code=ctx.trust_remote_code,
                                                  token=ctx.token)
        try:
            model = AutoModelForZeroShotImageClassification.from_pretrained(str(folder), **_common(ctx))
        except ValueError:  # a dual encoder transformers has no zero-shot mapping for
            model = AutoModel.from_pretrained(str(folder), **_common(ctx))
        return cls(model_id, ctx, model.to(ctx.device).eval(), processor, model_type)

    def _text_inputs(self, texts: list[str]) -> Any:
        limit = getattr(getattr(self.model.config, "text_config", None), "max_position_embeddings", None)
        max_length = min(int(self.tokenizer.model_max_length or 10**6), int(limit or 10**6))
        if self.model_type in SIGLIP_TYPES:
            return self.tokenizer(texts, padding="max_length", max_length=min(64, max_length), truncation=True,
                                  return_tensors="pt")
        return self.tokenizer(texts, padding=True, max_length=max_length, truncation=True, return_tensors="pt")

    def zero_shot_batch(self, items: list[tuple[Any, tuple[str, ...], tuple[str, ...]]]) -> list[Scored]:
        """Items (PIL image, labels, texts to encode per label) -> for each, every label scored, best first.

        One forward pass: all images, and the union of every item's texts.
        """
        import torch

        texts = list(dict.fromkeys(t for _, _, item_texts in items for t in item_texts))
        column = {t: i for i, t in enumerate(texts)}
        pixels = self.image_processor(images=[image for image, _, _ in items], return_tensors="pt")
        inputs = {**inputs_to(pixels, self.ctx.device, self.model.dtype),
                  **inputs_to(self._text_inputs(texts), self.ctx.device, self.model.dtype)}
        with torch.inference_mode():
            logits = self.model(**inputs).logits_per_image.float().cpu()
        results: list[Scored] = []
        for row, (_, labels, item_texts) in zip(logits, items, strict=True):
            picked = row[[column[t] for t in item_texts]]
            results.append(_ranked(list(labels), torch.softmax(picked, dim=-1).tolist()))
        return results

    def memory_bytes(self) -> int:
        return module_bytes(self.model)

    def describe(self) -> dict[str, Any]:
        return {"kind": "zero-shot-image", "model_type": self.model_type}

    def close(self) -> None:
        self.model = None
        super().close()


def _ranked(labels: list[str], scores: list[float]) -> Scored:
    """(label, score) pairs sorted by score descending (ties keep the label order)."""
    order = sorted(range(len(labels)), key=lambda i: -scores[i])
    return [(labels[i], float(scores[i])) for i in order]
