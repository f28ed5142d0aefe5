"""VITS models (`model_type: vits`: Meta's MMS-TTS checkpoints, kakao-enterprise VITS...): end-to-end text to
waveform with their own speaking rate, and speakers numbered `0..num_speakers-1` when they have several."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.contract import LoadContext
from core.errors import UnsupportedModelType
from models.speech.model import SpeechModel


class VitsSpeech(SpeechModel):
    """`VitsModel` with its character tokenizer; `speed` scales the predicted durations (speaking rate)."""

    kind = "vits"
    native_speed = True
    max_piece_chars = 400

    @classmethod
    def from_folder(cls, model_id: str, ctx: LoadContext, folder: Path) -> VitsSpeech:
        from transformers import AutoTokenizer, VitsModel

        tokenizer = AutoTokenizer.from_pretrained(folder)
        if getattr(tokenizer, "phonemize", False):
            import importlib.util

            if importlib.util.find_spec("phonemizer") is None:
                raise UnsupportedModelType(f"VITS model '{model_id}' reads phonemes: it needs the `phonemizer` "
                                           "package and the espeak program, which this install does not have.")
        model = VitsModel.from_pretrained(folder, dtype=ctx.torch_dtype()).to(ctx.device).eval()
        return cls(model_id, ctx, model, tokenizer)

    def __init__(self, model_id: str, ctx: LoadContext, model: object, tokenizer: object) -> None:
        config = model.config  # type: ignore[attr-defined]
        speakers = int(getattr(config, "num_speakers", 1) or 1)
        voices = tuple(str(i) for i in range(speakers)) if speakers > 1 else ()
        super().__init__(model_id, ctx, config.sampling_rate, voices)
        self.model = model
        self.tokenizer = tokenizer
        self.hop = int(np.prod(config.upsample_rates))
        self.rate_scale = float(getattr(config, "speaking_rate", 1.0) or 1.0)
        self.modules = (model,)

    def _ids(self, text: str) -> list[int]:
        ids = self.tokenizer(text).input_ids  # type: ignore[operator]
        pad = self.tokenizer.pad_token_id  # type: ignore[attr-defined]
        return ids if any(i != pad for i in ids) else []

    def count_tokens(self, text: str) -> int:
        return len(self._ids(text))

    def generate(self, text: str, voice: str | None, speed: float) -> np.ndarray:
        import torch

        ids = self._ids(text)
        if not ids:
            return np.zeros(0, np.float32)
        model = self.model
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([ids], device=model.device),  # type: ignore[attr-defined,operator]
                        speaker_id=int(voice) if voice is not None else None, speaking_rate=self.rate_scale * speed)
        return out.waveform[0].float().cpu().numpy()

    def close(self) -> None:
        self.model = None
        self.tokenizer = None
        super().close()
