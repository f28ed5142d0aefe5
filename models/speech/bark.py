"""Bark (`model_type: bark`, suno/bark and suno/bark-small): text -> semantic -> coarse -> fine EnCodec tokens
-> 24 kHz audio. Voices are the processor's speaker presets (`v2/en_speaker_6`, ...: the files listed in
`speaker_embeddings_path.json`, read from the folder or the hub cache); no voice lets Bark pick one at random.
Bark samples, so the same input sounds different each time; it speaks about 13 s per call, hence short pieces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.contract import LoadContext
from models.speech.model import SpeechModel

FRAME_SAMPLES = 320  # one EnCodec frame at 24 kHz (75 frames a second)


class BarkSpeech(SpeechModel):
    """`BarkModel` with its `BarkProcessor`; `speed` resamples the output."""

    kind = "bark"
    max_piece_chars = 180
    hop = FRAME_SAMPLES

    @classmethod
    def from_folder(cls, model_id: str, ctx: LoadContext, folder: Path) -> BarkSpeech:
        from transformers import BarkModel, BarkProcessor

        try:
            processor = BarkProcessor.from_pretrained(folder, token=ctx.token)
        except (OSError, ValueError):  # no speaker_embeddings_path.json: no presets
            processor = BarkProcessor.from_pretrained(folder, speaker_embeddings_dict_path=None)
        model = BarkModel.from_pretrained(folder, dtype=ctx.torch_dtype()).to(ctx.device).eval()
        return cls(model_id, ctx, model, processor)

    def __init__(self, model_id: str, ctx: LoadContext, model: object, processor: object) -> None:
        presets = tuple(sorted(getattr(processor, "available_voice_presets", None) or ()))
        rate = int(getattr(model.generation_config, "sample_rate", 24_000))  # type: ignore[attr-defined]
        super().__init__(model_id, ctx, rate, presets)
        self.default_voice = None  # no preset asked: Bark's own random speaker
        self.model, self.processor = model, processor
        self.modules = (model,)

    def pick_voice(self, voice: str | None) -> tuple[str | None, bool]:
        if voice is None or voice == "default":
            return None, False
        return super().pick_voice(voice)

    def count_tokens(self, text: str) -> int:
        return len(self.processor.tokenizer(text, add_special_tokens=False).input_ids)  # type: ignore[attr-defined]

    def generate(self, text: str, voice: str | None, speed: float) -> np.ndarray:
        import torch

        inputs = self.processor(text, voice_preset=voice, return_tensors="pt")  # type: ignore[operator]
        inputs = {k: v.to(self.model.device) if hasattr(v, "to") else v  # type: ignore[attr-defined]
                  for k, v in inputs.items()}
        with torch.inference_mode():
            audio = self.model.generate(**inputs)  # type: ignore[attr-defined]
        return audio.reshape(-1).float().cpu().numpy()

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "default_voice": None}

    def close(self) -> None:
        self.model = self.processor = None
        super().close()
