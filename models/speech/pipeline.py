"""Other text-to-audio models transformers knows (MusicGen, SeamlessM4T text-to-speech, FastSpeech2 with
HiFi-GAN, ...), through its `text-to-audio` pipeline: one voice, `speed` by resampling, several output
channels mixed down to mono."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from core.audio import resample
from core.contract import LoadContext
from models.speech.model import SpeechModel


class PipelineSpeech(SpeechModel):
    """A transformers `text-to-audio` pipeline."""

    kind = "pipeline"
    max_piece_chars = 300

    @classmethod
    def from_folder(cls, model_id: str, ctx: LoadContext, folder: Path) -> PipelineSpeech:
        from transformers import pipeline

        pipe = pipeline("text-to-audio", model=str(folder), device=ctx.device, dtype=ctx.torch_dtype(),
                        trust_remote_code=ctx.trust_remote_code, token=ctx.token)
        return cls(model_id, ctx, pipe)

    def __init__(self, model_id: str, ctx: LoadContext, pipe: Any) -> None:
        rate = int(getattr(pipe, "sampling_rate", None) or 16_000)
        super().__init__(model_id, ctx, rate)
        self.pipe = pipe
        self.modules = tuple(m for m in (pipe.model, getattr(pipe, "vocoder", None)) if m is not None)

    def count_tokens(self, text: str) -> int:
        tokenizer = getattr(self.pipe, "tokenizer", None)
        if tokenizer is None:
            return len(text.split())
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    def generate(self, text: str, voice: str | None, speed: float) -> np.ndarray:
        out = self.pipe(text)
        audio = np.asarray(out["audio"], dtype=np.float32)
        if audio.ndim > 1:  # (channels, samples), possibly with a batch axis: mix down
            audio = audio.reshape(-1, audio.shape[-1]).mean(axis=0)
        return resample(audio, int(out.get("sampling_rate") or self.sampling_rate), self.sampling_rate)

    def close(self) -> None:
        self.pipe = None
        super().close()
