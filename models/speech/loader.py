"""The loader of category "speech": text to speech.

The sub-kind is read from the model's own config.json, never from its name:

- `model_type` "vits" -> VITS (MMS-TTS and other VITS checkpoints);
- `model_type` "speecht5" with a `SpeechT5ForTextToSpeech` architecture (or none) -> SpeechT5 + HiFi-GAN;
- `model_type` "bark" -> Bark;
- any other model type transformers' `text-to-audio` pipeline takes (its text-to-waveform and
  text-to-spectrogram model types: MusicGen, SeamlessM4T, FastSpeech2 Conformer, ...) -> that pipeline;
- anything else -> 400 unsupported_model_type.
"""

from __future__ import annotations

from typing import Any

from core.contract import BaseModel, LoadContext
from core.detect import architectures
from core.registry import require_kind
from core.resolve import ModelSpec


def pipeline_types() -> set[str]:
    """Model types transformers' text-to-audio pipeline can load."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_TEXT_TO_SPECTROGRAM_MAPPING_NAMES,
        MODEL_FOR_TEXT_TO_WAVEFORM_MAPPING_NAMES,
    )

    return set(MODEL_FOR_TEXT_TO_WAVEFORM_MAPPING_NAMES) | set(MODEL_FOR_TEXT_TO_SPECTROGRAM_MAPPING_NAMES)


def detect_kind(config: dict[str, Any]) -> str | None:
    """'vits' | 'speecht5' | 'bark' | 'pipeline' | None from a config.json dict."""
    model_type = str(config.get("model_type", ""))
    archs = architectures(config)
    if model_type == "vits":
        return "vits"
    if model_type == "speecht5":
        return "speecht5" if not archs or "SpeechT5ForTextToSpeech" in archs else None
    if model_type == "bark":
        return "bark"
    if model_type in pipeline_types():
        return "pipeline"
    return None


def load(spec: ModelSpec, ctx: LoadContext) -> BaseModel:
    """Load a text-to-speech model from its local folder, choosing the sub-kind from its config."""
    from models.speech.bark import BarkSpeech
    from models.speech.pipeline import PipelineSpeech
    from models.speech.speecht5 import SpeechT5Speech
    from models.speech.vits import VitsSpeech

    folder, _config, kind = require_kind(spec, ctx, detect_kind)
    cls = {"vits": VitsSpeech, "speecht5": SpeechT5Speech, "bark": BarkSpeech, "pipeline": PipelineSpeech}[kind]
    return cls.from_folder(spec.key, ctx, folder)
