"""The text-to-speech model class every sub-kind shares, and one request's synthesis.

A request's input is cut into pieces (`models/speech/text.py`: sentences, at most the model's
`max_piece_chars`), spoken one at a time on the model's worker thread. Pieces are joined without clicks: each
gets a short raised-cosine fade in and out (`FADE_SECONDS`), and a pause of `GAP_SECONDS` of silence goes
between two pieces (both shortened by `speed`). A stream sends each piece as soon as it is spoken; the
whole-file answer is the same samples joined.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from core.audio import resample
from core.contract import BaseModel, LoadContext, module_bytes
from core.errors import InvalidRequest
from models.speech.text import split_text
from models.speech.voices import pick_voice

FADE_SECONDS = 0.005
GAP_SECONDS = 0.12


class SpeechModel(BaseModel):
    """A loaded text-to-speech model. Sub-kinds implement `generate` (one piece of text -> mono float32
    samples at `sampling_rate`) and `count_tokens`; everything else is shared."""

    category = "speech"
    capabilities = frozenset({"speech"})
    kind = ""
    native_speed = False  # `generate` honours `speed` itself (VITS' speaking rate); else the audio is resampled
    max_piece_chars = 400  # longest piece of text spoken in one call
    hop = 0  # output samples per acoustic frame (usage.output_tokens counts frames); 0 = not counted

    def __init__(self, model_id: str, ctx: LoadContext, sampling_rate: int, voices: tuple[str, ...] = (),
                 default_voice: str | None = None) -> None:
        super().__init__(model_id, ctx)
        self.sampling_rate = int(sampling_rate)
        self.voices = tuple(voices)
        self.default_voice = default_voice if default_voice in self.voices else (self.voices or (None,))[0]
        self.modules: tuple[Any, ...] = ()  # torch modules, for memory accounting

    def generate(self, text: str, voice: str | None, speed: float) -> np.ndarray:
        """Speak one piece of text (runs on the worker thread). `speed` matters only when `native_speed`."""
        raise NotImplementedError

    def count_tokens(self, text: str) -> int:
        """Tokens the model reads for `text` (0: nothing in it the model can speak)."""
        raise NotImplementedError

    def pick_voice(self, voice: str | None) -> tuple[str | None, bool]:
        """(the voice to use, whether the request's voice was ignored); 400 `voice` for an unknown one."""
        return pick_voice(voice, self.voices, self.default_voice, self.model_id)

    def start(self, text: str, voice: str | None, speed: float) -> Synthesis:
        """Cut `text` into pieces and count their tokens (on the worker thread); 400 `input` when nothing in
        it can be spoken."""
        pieces, tokens = [], 0
        for piece in split_text(text, self.max_piece_chars):
            n = self.count_tokens(piece)
            if n:
                pieces.append(piece)
                tokens += n
        if not pieces:
            raise InvalidRequest(f"The input has nothing model '{self.model_id}' can speak (none of its characters "
                                 "are in the model's vocabulary).", param="input")
        return Synthesis(self, pieces, voice, float(speed), input_tokens=tokens)

    def memory_bytes(self) -> int:
        return module_bytes(*self.modules)

    def describe(self) -> dict[str, Any]:
        return {"speech_kind": self.kind, "sampling_rate": self.sampling_rate, "voices": list(self.voices),
                "default_voice": self.default_voice, "capabilities": sorted(self.capabilities)}

    def close(self) -> None:
        self.modules = ()
        super().close()


def change_speed(samples: np.ndarray, speed: float) -> np.ndarray:
    """`samples` played `speed` times faster (shorter by that factor; the pitch moves with it), by resampling."""
    if speed == 1.0 or len(samples) == 0:
        return samples
    ratio = Fraction(speed).limit_denominator(100)
    return resample(samples, ratio.numerator, ratio.denominator)


def fade(samples: np.ndarray, rate: int) -> np.ndarray:
    """Raised-cosine fade in and out of `FADE_SECONDS` (at most half the piece each), so joins never click."""
    n = min(int(rate * FADE_SECONDS), len(samples) // 2)
    if n < 2:
        return samples
    out = np.array(samples, dtype=np.float32, copy=True)
    ramp = (0.5 - 0.5 * np.cos(np.linspace(0.0, math.pi, n, dtype=np.float32))).astype(np.float32)
    out[:n] *= ramp
    out[-n:] *= ramp[::-1]
    return out


@dataclass
class Synthesis:
    """One request's speech: its pieces, spoken in order by `next()` on the model's worker thread."""

    model: SpeechModel
    pieces: list[str]
    voice: str | None
    speed: float
    input_tokens: int = 0
    output_tokens: int = 0
    samples: int = 0  # at the model's rate, pauses included
    done: int = 0  # pieces spoken

    def next(self) -> np.ndarray | None:
        """The next piece's samples, with its fades and the pause before it; None after the last one."""
        if self.done >= len(self.pieces):
            return None
        model, rate = self.model, self.model.sampling_rate
        raw = np.asarray(model.generate(self.pieces[self.done], self.voice, self.speed), dtype=np.float32)
        raw = np.nan_to_num(raw.reshape(-1), nan=0.0, posinf=1.0, neginf=-1.0)
        if model.hop:
            self.output_tokens += math.ceil(len(raw) / model.hop)
        audio = fade(raw if model.native_speed else change_speed(raw, self.speed), rate)
        if self.done:
            audio = np.concatenate([np.zeros(int(rate * GAP_SECONDS / self.speed), np.float32), audio])
        self.done += 1
        self.samples += len(audio)
        return audio

    def all(self) -> np.ndarray:
        """Every remaining piece, joined."""
        parts = []
        while (part := self.next()) is not None:
            parts.append(part)
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def usage(self) -> dict[str, int]:
        """OpenAI's speech usage: tokens read, acoustic frames made (0 where the model has none to count)."""
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "total_tokens": self.input_tokens + self.output_tokens}
