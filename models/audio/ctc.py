"""CTC speech models (Wav2Vec2, HuBERT, WavLM, ... `*ForCTC`): transcription only, with word timings.

Long audio is cut into windows that overlap by a few seconds of context on each side; only the logits of
each window's own span are kept, so the concatenated frames line up with the audio and word offsets (in
logit frames) convert to seconds with the model's inputs-to-logits ratio.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from core.contract import LoadContext
from core.errors import UnsupportedModelType
from core.subtitles import Segment, Transcript, Word
from models.audio.model import SpeechModel, tidy_segments, tidy_words

WINDOW_SECONDS = 30.0
CONTEXT_SECONDS = 2.0
SEGMENT_GAP_SECONDS = 1.0  # a pause this long between words starts a new segment
SEGMENT_MAX_SECONDS = 30.0
MIN_SAMPLES = 1600  # shorter inputs are zero-padded so the convolutional front end has enough to see


class CtcSpeech(SpeechModel):
    """A `*ForCTC` checkpoint with its feature extractor and CTC tokenizer."""

    kind = "ctc"
    capabilities = frozenset({"transcribe"})
    honours = frozenset()
    word_timestamps = True

    @classmethod
    def from_folder(cls, model_id: str, ctx: LoadContext, folder: Path) -> CtcSpeech:
        from transformers import AutoModelForCTC, AutoProcessor

        processor = AutoProcessor.from_pretrained(folder)
        if not hasattr(processor, "tokenizer") or not hasattr(processor, "feature_extractor"):
            raise UnsupportedModelType(f"CTC model '{model_id}' has no tokenizer and feature extractor to decode "
                                       "its output.")
        model = AutoModelForCTC.from_pretrained(folder, dtype=ctx.torch_dtype())
        return cls(model_id, ctx, model.to(ctx.device).eval(), processor)

    def __init__(self, model_id: str, ctx: LoadContext, model: Any, processor: Any) -> None:
        super().__init__(model_id, ctx, model, processor)
        ratio = getattr(model.config, "inputs_to_logits_ratio", None)
        if not ratio:
            ratio = int(np.prod(getattr(model.config, "conv_stride", [320])))
        self.ratio = int(ratio)
        tokenizer = processor.tokenizer
        self.blank = int(tokenizer.pad_token_id or 0)
        delimiter = getattr(tokenizer, "word_delimiter_token_id", None)
        self.other_specials = set(tokenizer.all_special_ids) - {self.blank, delimiter}

    def _forward(self, samples: np.ndarray) -> Any:
        """Logits (frames, vocab) of one window."""
        if len(samples) < MIN_SAMPLES:
            samples = np.pad(samples, (0, MIN_SAMPLES - len(samples)))
        inputs = self.processor.feature_extractor(samples, sampling_rate=self.sampling_rate, return_tensors="pt")
        values = inputs.input_values.to(self.model.device, self.model.dtype)
        return self.model(values).logits[0].float()

    def logits(self, samples: np.ndarray) -> Any:
        """Logits of the whole input, computed window by window with context on both sides.

        Windows and context are whole numbers of logit frames, so frame k of a window that starts at
        sample `lo` is global frame `lo / ratio + k`: no drift however long the audio.
        """
        import torch

        n, step = len(samples), self.ratio
        window = max(1, round(WINDOW_SECONDS * self.sampling_rate / step)) * step
        context = max(1, round(CONTEXT_SECONDS * self.sampling_rate / step)) * step
        with torch.inference_mode():
            if n <= window + context:
                return self._forward(samples)
            parts = []
            for start in range(0, n, window):
                end = min(n, start + window)
                lo = max(0, start - context)
                frames = self._forward(samples[lo:min(n, end + context)])
                first = (start - lo) // step
                parts.append(frames[first:first + -(-(end - start) // step)])
            return torch.cat(parts)

    def transcribe(self, samples: np.ndarray, *, task: str = "transcribe", language: str | None = None,
                   prompt: str | None = None, temperature: float | None = None, timestamps: bool = False,
                   words: bool = False) -> Transcript:
        duration = len(samples) / float(self.sampling_rate)
        ids = self.logits(samples).argmax(dim=-1).tolist()
        ids = [self.blank if i in self.other_specials else i for i in ids]  # stray <s>, </s>, <unk>: blanks
        seconds_per_frame = self.ratio / float(self.sampling_rate)
        tokenizer = self.processor.tokenizer
        try:
            decoded = tokenizer.decode(ids, output_word_offsets=True)
            text, offsets = str(decoded["text"]), decoded["word_offsets"]
        except TypeError:  # a CTC tokenizer without offsets (phoneme tokenizers): text only
            text, offsets = str(tokenizer.decode(ids)), None
        if offsets is None:
            text = text.strip()
            segments = [Segment(start=0.0, end=duration, text=" " + text)] if text else []
            return Transcript(text=text, segments=segments, language=None, words=None)
        word_list = tidy_words([Word(word=str(w["word"]), start=float(w["start_offset"] * seconds_per_frame),
                                     end=float(w["end_offset"] * seconds_per_frame)) for w in offsets], duration)
        segments = tidy_segments(group_words(word_list), duration)
        return Transcript(text=" ".join(w.word for w in word_list), segments=segments, language=None,
                          words=word_list if words else None)


def group_words(words: list[Word]) -> list[Segment]:
    """Segments of words split at pauses of SEGMENT_GAP_SECONDS or after SEGMENT_MAX_SECONDS."""
    segments: list[Segment] = []
    current: list[Word] = []
    for word in words:
        if current and (word.start - current[-1].end >= SEGMENT_GAP_SECONDS
                        or word.end - current[0].start > SEGMENT_MAX_SECONDS):
            segments.append(_segment(current))
            current = []
        current.append(word)
    if current:
        segments.append(_segment(current))
    return segments


def _segment(words: list[Word]) -> Segment:
    return Segment(start=words[0].start, end=words[-1].end, text=" " + " ".join(w.word for w in words))
