"""SpeechT5 text to speech (`SpeechT5ForTextToSpeech`): a mel spectrogram decoded step by step, turned into a
waveform by a HiFi-GAN vocoder, in the voice of a speaker embedding (`models/speech/voices.py`).

The vocoder is the folder's `vocoder/` subfolder when it has one (a saved `SpeechT5HifiGan`), else
`microsoft/speecht5_hifigan` from the Hugging Face cache or hub.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.contract import LoadContext
from core.errors import UnsupportedModelType
from models.speech.model import SpeechModel
from models.speech.voices import read_speaker_embeddings

VOCODER_FOLDER = "vocoder"
HUB_VOCODER = "microsoft/speecht5_hifigan"


def load_vocoder(model_id: str, ctx: LoadContext, folder: Path) -> object:
    """The HiFi-GAN vocoder: `<folder>/vocoder`, else the hub's microsoft/speecht5_hifigan."""
    from transformers import SpeechT5HifiGan

    local = folder / VOCODER_FOLDER
    source = str(local) if (local / "config.json").exists() else HUB_VOCODER
    try:
        vocoder = SpeechT5HifiGan.from_pretrained(source, dtype=ctx.torch_dtype(), token=ctx.token)
    except OSError as exc:
        raise UnsupportedModelType(f"SpeechT5 model '{model_id}' needs a HiFi-GAN vocoder: save one in its folder "
                                   f"as '{VOCODER_FOLDER}/', or have '{HUB_VOCODER}' in the Hugging Face cache "
                                   f"({exc.__class__.__name__}).") from None
    return vocoder.to(ctx.device).eval()


class SpeechT5Speech(SpeechModel):
    """`SpeechT5ForTextToSpeech` + `SpeechT5HifiGan`; voices are the folder's speaker embeddings."""

    kind = "speecht5"
    max_piece_chars = 300  # the character tokenizer's ids must fit max_text_positions (450 for the Microsoft model)

    @classmethod
    def from_folder(cls, model_id: str, ctx: LoadContext, folder: Path) -> SpeechT5Speech:
        from transformers import AutoTokenizer, SpeechT5ForTextToSpeech

        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = SpeechT5ForTextToSpeech.from_pretrained(folder, dtype=ctx.torch_dtype()).to(ctx.device).eval()
        vocoder = load_vocoder(model_id, ctx, folder)
        return cls(model_id, ctx, model, vocoder, tokenizer, folder)

    def __init__(self, model_id: str, ctx: LoadContext, model: object, vocoder: object, tokenizer: object,
                 folder: Path) -> None:
        import torch

        config = model.config  # type: ignore[attr-defined]
        dim = int(config.speaker_embedding_dim)
        embeddings = read_speaker_embeddings(folder, dim)
        super().__init__(model_id, ctx, vocoder.config.sampling_rate, tuple(embeddings))  # type: ignore[attr-defined]
        dtype, device = model.dtype, model.device  # type: ignore[attr-defined]
        self.embeddings = {name: v.to(device, dtype)[None] for name, v in embeddings.items()}
        self.silent_voice = torch.zeros(1, dim, dtype=dtype, device=device)
        self.model, self.vocoder, self.tokenizer = model, vocoder, tokenizer
        self.max_tokens = int(getattr(config, "max_text_positions", 450))
        self.hop = int(np.prod(vocoder.config.upsample_rates))  # type: ignore[attr-defined]
        self.modules = (model, vocoder)

    def _ids(self, text: str) -> list[int]:
        ids = self.tokenizer(text).input_ids[:self.max_tokens]  # type: ignore[operator]
        specials = set(self.tokenizer.all_special_ids)  # type: ignore[attr-defined]
        return ids if any(i not in specials for i in ids) else []

    def count_tokens(self, text: str) -> int:
        return len(self._ids(text))

    def generate(self, text: str, voice: str | None, speed: float) -> np.ndarray:
        import torch

        ids = self._ids(text)
        if not ids:
            return np.zeros(0, np.float32)
        speaker = self.embeddings.get(voice) if voice is not None else None
        with torch.inference_mode():
            wave = self.model.generate_speech(  # type: ignore[attr-defined]
                torch.tensor([ids], device=self.model.device),  # type: ignore[attr-defined]
                speaker if speaker is not None else self.silent_voice, vocoder=self.vocoder)
        return wave.reshape(-1).float().cpu().numpy()

    def close(self) -> None:
        self.model = self.vocoder = self.tokenizer = None
        self.embeddings = {}
        super().close()
