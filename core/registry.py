"""Category -> loader, and the one check that a model's files are of a kind the endpoint's category can load.

Each loader reads the model's own config files to choose the sub-kind (and refuses the wrong sub-kinds of its
own category); `check_category` refuses, before anything is loaded, a model of another category altogether.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.detect import architectures, detect_category, model_config, read_json
from core.errors import InvalidRequest, UnsupportedModelType

if TYPE_CHECKING:
    from core.contract import BaseModel, LoadContext
    from core.resolve import ModelSpec

Loader = Callable[["ModelSpec", "LoadContext"], "BaseModel"]

LOADERS: dict[str, str] = {
    "causal": "models.language:load",
    "encoder": "models.encoder:load",
    "diffusion": "models.diffusion:load",
    "vision": "models.vision:load",
    "audio": "models.audio:load",
    "multimodal": "models.multimodal:load",
    "speech": "models.speech:load",
}


def get_loader(category: str) -> Loader:
    """The loader of a category, imported on first use (so heavy libraries load lazily)."""
    if category not in LOADERS:
        raise InvalidRequest(f"Unknown model type '{category}'; one of {', '.join(LOADERS)}.", param="type")
    module_name, attr = LOADERS[category].split(":")
    return getattr(importlib.import_module(module_name), attr)


# Categories of model files (as core.detect reads them) each endpoint category's loader can take. Generous where
# the coarse detection overlaps a loader's own (a sentence-transformers model may be a causal LM; a CLIP-style
# or image-text-to-text model may be read as a plain encoder or as a causal LM): the loader decides those.
ACCEPTS: dict[str, frozenset[str]] = {
    "causal": frozenset({"causal", "encoder", "multimodal"}),
    "encoder": frozenset({"encoder", "causal"}),
    "diffusion": frozenset({"diffusion"}),
    "vision": frozenset({"vision", "encoder", "multimodal"}),
    "audio": frozenset({"audio"}),
    "multimodal": frozenset({"multimodal", "causal", "encoder"}),
    "speech": frozenset({"speech"}),
}
WHAT = {"causal": "a causal language model", "encoder": "a text encoder", "diffusion": "a diffusers pipeline",
        "vision": "an image classifier or CLIP-style model", "audio": "a speech-to-text model",
        "multimodal": "an image-to-text (captioning / VQA) model", "speech": "a text-to-speech model"}
NEEDS = {"causal": "chat and completions need a causal language model",
         "encoder": "embeddings, classify and rerank need a text encoder",
         "diffusion": "image endpoints need a diffusers pipeline",
         "vision": "vision endpoints need an image classifier or a CLIP-style zero-shot model",
         "audio": "audio endpoints need a Whisper-family or CTC speech model",
         "multimodal": "captioning and VQA need a captioning, VQA or image-text-to-text model",
         "speech": "speech synthesis needs a text-to-speech model (VITS / MMS-TTS, SpeechT5, Bark or another "
                   "text-to-audio model)"}


def check_category(spec: ModelSpec) -> None:
    """400 `unsupported_model_type` when the model's own files say it is of a category the endpoint (the spec's
    category) cannot load. Models whose files are not local yet, or whose kind cannot be told, pass: their
    loader decides."""
    found = detect_category(spec)
    if found is None or found in ACCEPTS.get(spec.category, frozenset({found})):
        return
    if spec.gguf_file:
        facts = f"GGUF file {spec.gguf_file}"
    elif found == "diffusion" and spec.path is not None:
        facts = f"pipeline {read_json(spec.path / 'model_index.json').get('_class_name', 'unknown')}"
    else:
        config = model_config(spec.path)
        facts = f"model_type '{config.get('model_type')}', architectures {architectures(config) or 'none'}"
    raise UnsupportedModelType(f"Model '{spec.requested}' is {WHAT[found]} ({facts}); {NEEDS[spec.category]}.")


def require_kind(spec: ModelSpec, ctx: LoadContext,
                 detect: Callable[[dict[str, Any]], str | None]) -> tuple[Path, dict[str, Any], str]:
    """(folder, config, sub-kind) of a transformers model folder whose sub-kind `detect` reads from its
    config.json, or 400 `unsupported_model_type` worded from the category's NEEDS; reports the sub-kind as
    load progress."""
    needs = NEEDS[spec.category]
    if spec.gguf_file or spec.path is None:
        raise UnsupportedModelType(f"{needs[:1].upper()}{needs[1:]}: a transformers model folder, not a GGUF file.")
    folder = Path(spec.path)
    config = model_config(folder)
    kind = detect(config)
    if kind is None:
        raise UnsupportedModelType(f"Model '{spec.requested}' is not of a kind this category loads "
                                   f"(model_type '{config.get('model_type')}', architectures "
                                   f"{architectures(config) or 'none'}); {needs}.")
    ctx.progress(f"loading {kind} model")
    return folder, config, kind
