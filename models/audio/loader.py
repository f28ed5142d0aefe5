"""The loader of category "audio": speech to text with Whisper-family or CTC (Wav2Vec2-style) models.

The sub-kind is read from the model's own config.json, never from its name:

- `model_type` "whisper" with a `WhisperForConditionalGeneration` architecture (or none) -> Whisper
  (capabilities transcribe + translate; English-only checkpoints transcribe only);
- an architecture ending in `ForCTC` -> CTC (transcribe only; translation is a 400 from the manager);
- anything else -> 400 unsupported_model_type.

One loaded copy serves both /v1/audio/transcriptions and /v1/audio/translations.
"""

from __future__ import annotations

from typing import Any

from core.contract import BaseModel, LoadContext
from core.detect import architectures
from core.registry import require_kind
from core.resolve import ModelSpec
from models.audio.ctc import CtcSpeech
from models.audio.whisper import WhisperSpeech


def detect_kind(config: dict[str, Any]) -> str | None:
    """'whisper' | 'ctc' | None from a config.json dict."""
    archs = architectures(config)
    model_type = str(config.get("model_type", ""))
    if model_type == "whisper" and (not archs or "WhisperForConditionalGeneration" in archs):
        return "whisper"
    if any(a.endswith("ForCTC") for a in archs):
        return "ctc"
    return None


def load(spec: ModelSpec, ctx: LoadContext) -> BaseModel:
    """Load a speech-to-text model from its local folder, choosing Whisper or CTC from its config."""
    folder, config, kind = require_kind(spec, ctx, detect_kind)
    cls = WhisperSpeech if kind == "whisper" else CtcSpeech
    return cls.from_folder(spec.key, ctx, folder)
