"""Audio decoding in-process (no ffmpeg): bytes in, float32 mono samples at the model's rate out.

WAV (PCM 8/16/24/32-bit, float), FLAC, OGG (Vorbis, Opus) and MP3 are read by libsndfile through
`soundfile`; channels are averaged; other sample rates are resampled with a polyphase anti-aliasing
filter (`scipy.signal.resample_poly`). Every failure is a 400 naming the `file` field.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from math import gcd

import numpy as np

from core.errors import InvalidRequest

PARAM = "file"
# A file whose header promises more frames than it delivers by more than this is truncated
# (two MP3 frames of slack: encoders' delay/padding bookkeeping is not always exact).
TRUNCATION_SLACK_FRAMES = 2304


@dataclass
class Audio:
    """Decoded mono audio."""

    samples: np.ndarray  # float32, shape (n,)
    rate: int

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.samples) / float(self.rate) if self.rate else 0.0


def _bad(message: str) -> InvalidRequest:
    return InvalidRequest(message, param=PARAM)


def _wav_truncated(data: bytes) -> bool:
    """True when a RIFF/WAVE file's `data` chunk declares more bytes than the upload holds."""
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RIFX") or data[8:12] != b"WAVE":
        return False
    fmt = "<I" if data[:4] == b"RIFF" else ">I"
    pos = 12
    while pos + 8 <= len(data):
        chunk_id = data[pos:pos + 4]
        (size,) = struct.unpack(fmt, data[pos + 4:pos + 8])
        if chunk_id == b"data":
            if size in (0, 0xFFFFFFFF):  # streaming writers leave the size open
                return False
            return pos + 8 + size > len(data)
        pos += 8 + size + (size & 1)
    return False


def _format_name(info_format: str) -> str:
    return {"OGG": "OGG", "MP3": "MP3", "FLAC": "FLAC", "WAV": "WAV", "WAVEX": "WAV"}.get(info_format, info_format)


def read_audio(data: bytes, max_seconds: float | None = None) -> Audio:
    """Decode an uploaded file to mono float32 at its own sample rate.

    Raises InvalidRequest(param="file") for empty, truncated,, unreadable or too-long input.
    """
    import soundfile as sf

    if not data:
        raise _bad("The uploaded audio file is empty.")
    if _wav_truncated(data):
        raise _bad("The uploaded WAV file is truncated (its data chunk is shorter than its header says).")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate, channels, declared = int(f.samplerate), int(f.channels), int(f.frames)
            kind = _format_name(f.format)
            if rate <= 0 or channels <= 0:
                raise _bad("The uploaded audio has no sample rate or no channels.")
            if max_seconds is not None and declared > 0 and declared / rate > max_seconds + 1.0:
                raise _too_long(declared / rate, max_seconds)
            frames = f.read(dtype="float32", always_2d=True)
    except InvalidRequest:
        raise
    except Exception as exc:  # noqa: BLE001 - libsndfile reports every decoding failure this way
        detail = str(exc).split(":")[-1].strip().rstrip(".") or type(exc).__name__
        raise _bad(f"Could not decode the uploaded file as audio (WAV, FLAC, OGG or MP3): {detail}.") from exc
    got = frames.shape[0]
    if got == 0:
        raise _bad("The uploaded audio contains no samples.")
    if kind != "WAV" and declared > 0 and declared - got > max(TRUNCATION_SLACK_FRAMES, declared // 50):
        raise _bad(f"The uploaded {kind} file is truncated: its header promises {declared} frames, "
                   f"only {got} could be decoded.")
    mono = frames.mean(axis=1, dtype=np.float32) if frames.shape[1] > 1 else frames[:, 0]
    if not np.isfinite(mono).all():
        mono = np.nan_to_num(mono, nan=0.0, posinf=1.0, neginf=-1.0)
    audio = Audio(np.ascontiguousarray(mono, dtype=np.float32), rate)
    if max_seconds is not None and audio.duration > max_seconds:
        raise _too_long(audio.duration, max_seconds)
    return audio


def _too_long(seconds: float, limit: float) -> InvalidRequest:
    return _bad(f"The audio is {seconds:.1f} s long; this server accepts at most {limit:g} s "
                "(UNIVERSAL_RUNTIME_MAX_AUDIO_SECONDS).")


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Resample with a polyphase FIR anti-aliasing filter (no-op when the rates match)."""
    if rate == target or len(samples) == 0:
        return samples.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    g = gcd(int(rate), int(target))
    out = resample_poly(samples, target // g, rate // g)
    return np.ascontiguousarray(out, dtype=np.float32)


def decode_audio(data: bytes, target_rate: int | None = None, max_seconds: float | None = None) -> Audio:
    """Decode, down-mix and (when `target_rate` is given) resample an uploaded file."""
    audio = read_audio(data, max_seconds)
    if target_rate and audio.rate != target_rate:
        return Audio(resample(audio.samples, audio.rate, target_rate), int(target_rate))
    return audio
