"""The speech-to-text model class both sub-kinds share, and the clean-up of their timings."""

from __future__ import annotations

from typing import Any

import numpy as np

from core.contract import BaseModel, LoadContext, module_bytes
from core.subtitles import Segment, Transcript, Word


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
