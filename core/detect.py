"""Read a model's own config files to tell its category (used when a load request names no type)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.resolve import ModelSpec

# Text-to-speech / text-to-audio model types (SpeechT5 and SeamlessM4T are told by their ...ForTextToSpeech
# architecture: their model types also cover speech-to-text checkpoints).
SPEECH_TYPES = ("vits", "bark", "musicgen", "musicgen_melody", "fastspeech2_conformer",
                "fastspeech2_conformer_with_hifigan")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file as a dict ({} when missing or unreadable)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def model_config(folder: Path | None) -> dict[str, Any]:
    """The folder's config.json ({} if none)."""
    return read_json(folder / "config.json") if folder else {}


def architectures(config: dict[str, Any]) -> list[str]:
    return [str(a) for a in (config.get("architectures") or [])]


def detect_category(spec: ModelSpec) -> str | None:
    """causal | encoder | diffusion | vision | audio | multimodal | speech, or None when it cannot tell."""
    if spec.gguf_file:
        return "causal"
    folder = spec.path
    if folder is None:
        return None
    if (folder / "model_index.json").exists():
        return "diffusion"
    if (folder / "modules.json").exists() or (folder / "config_sentence_transformers.json").exists():
        return "encoder"
    config = model_config(folder)
    archs = " ".join(architectures(config))
    model_type = str(config.get("model_type", ""))
    if model_type in ("whisper", "wav2vec2", "hubert", "wavlm", "speech_to_text") or "ForCTC" in archs \
            or "ForSpeechSeq2Seq" in archs or "Whisper" in archs:
        return "audio"
    if model_type in SPEECH_TYPES or "ForTextToSpeech" in archs:
        return "speech"
    if model_type.startswith("blip") or "ForQuestionAnswering" in archs and "vision_config" in config:
        return "multimodal"
    if "ForImageClassification" in archs or model_type in ("clip", "siglip", "siglip2", "chinese_clip"):
        return "vision"
    if "ForConditionalGeneration" in archs and "vision_config" in config:
        return "causal"  # image-text-to-text chat models are served by chat
    if "ForCausalLM" in archs or "LMHeadModel" in archs:
        return "causal"
    if "ForSequenceClassification" in archs or archs.endswith("Model") or model_type in ("bert", "roberta"):
        return "encoder"
    return None
