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

import numpy as np

from core.contract import BaseModel, LoadContext, module_bytes
from core.detect import architectures, require_kind
from core.resolve import ModelSpec
from core.subtitles import Segment, Transcript, Word


def detect_kind(config: dict[str, Any]) -> str | None:
    """'whisper' | 'ctc' | None from a config.json dict."""
    archs = architectures(config)
    model_type = str(config.get("model_type", ""))
    if model_type == "whisper" and (not archs or "WhisperForConditionalGeneration" in archs):
        return "whisper"
    if any(a.endswith("ForCTC") for a in archs):
        return "ctc"
    return None


class SpeechModel(BaseModel):
    """A loaded speech-to-text model: `transcribe(samples, ...)` on mono float32 at `sampling_rate`."""

    category = "audio"
    kind = ""
    honours: frozenset[str] = frozenset()  # optional request fields the model uses (language, prompt, ...)
    word_timestamps = False  # whether `words=True` can give word timings

    def __init__(self, model_id: str, ctx: LoadContext, model: Any, processor: Any) -> None:
        super().__init__(model_id, ctx)
        self.model = model
        self.processor = processor
        self.sampling_rate = int(getattr(processor.feature_extractor, "sampling_rate", 16000))

    def transcribe(self, samples: np.ndarray, *, task: str = "transcribe", language: str | None = None,
                   prompt: str | None = None, temperature: float | None = None, timestamps: bool = False,
                   words: bool = False) -> Transcript:
        """Speech to text; `timestamps` asks for timed segments, `words` for word timings when possible."""
        raise NotImplementedError

    def memory_bytes(self) -> int:
        return module_bytes(self.model)

    def describe(self) -> dict[str, Any]:
        return {"audio_kind": self.kind, "sampling_rate": self.sampling_rate,
                "capabilities": sorted(self.capabilities)}

    def close(self) -> None:
        self.model = None
        self.processor = None
        super().close()


def _clamp(start: float, end: float, floor: float, duration: float) -> tuple[float, float]:
    start = float(min(max(start, floor, 0.0), duration))
    return start, float(min(max(end, start), duration))


def tidy_segments(segments: list[Segment], duration: float) -> list[Segment]:
    """Clamp segments into [0, duration] and make starts non-decreasing and every end >= its start."""
    out: list[Segment] = []
    for seg in segments:
        start, end = _clamp(seg.start, seg.end, out[-1].start if out else 0.0, duration)
        out.append(Segment(start=start, end=end, text=seg.text, tokens=seg.tokens, seek=int(round(start * 100))))
    return out


def tidy_words(words: list[Word], duration: float) -> list[Word]:
    """Same rules as `tidy_segments`, for words."""
    out: list[Word] = []
    for w in words:
        start, end = _clamp(w.start, w.end, out[-1].start if out else 0.0, duration)
        out.append(Word(word=w.word, start=start, end=end))
    return out


def load(spec: ModelSpec, ctx: LoadContext) -> BaseModel:
    """Load a speech-to-text model from its local folder, choosing Whisper or CTC from its config."""
    folder, config, kind = require_kind(spec, detect_kind, "Audio endpoints",
                                        "a Whisper-family or CTC speech model")
    ctx.progress(f"loading {kind} speech model")
    if kind == "whisper":
        from models.audio.whisper import WhisperSpeech

        return WhisperSpeech.from_folder(spec.key, ctx, folder)
    from models.audio.ctc import CtcSpeech

    return CtcSpeech.from_folder(spec.key, ctx, folder)
