"""Audio encoding for POST /v1/audio/speech, in-process with libsndfile (the `soundfile` package): no ffmpeg.

| format | container / codec | sample rate |
|---|---|---|
| `wav` | RIFF WAVE, 16-bit PCM | the model's |
| `flac` | FLAC, 16-bit | the model's |
| `mp3` | MPEG-1/2 Layer III | the model's when MP3 has it (8-48 kHz), else the next one up |
| `opus` | Ogg Opus | the model's when Opus has it (8, 12, 16, 24, 48 kHz), else 48 kHz |
| `pcm` | raw 16-bit little-endian mono, no header | 24 kHz (as OpenAI documents) |
| `aac` | needs an AAC encoder, which libsndfile does not have: a 400 naming the format |

A whole file (`encode_file`) is written in one go, so its header is complete (WAV sizes, FLAC STREAMINFO, the MP3
Info tag that gives players the exact length). A stream (`StreamEncoder`) hands out bytes as they are
encoded: WAV gets the streaming header (sizes 0xFFFFFFFF), MP3 is constant bitrate without the Info tag (a
player can tell the length from the bitrate), FLAC leaves the STREAMINFO length at "unknown", Ogg pages go
out as libsndfile fills them.
"""

from __future__ import annotations

import io
import struct
import threading
from typing import Any

import numpy as np

from core.audio import resample
from core.errors import InvalidRequest

FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
CONTENT_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg; codecs=opus", "aac": "audio/aac", "flac": "audio/flac",
                 "wav": "audio/wav", "pcm": "audio/pcm"}
SOUNDFILE = {"mp3": ("MP3", "MPEG_LAYER_III"), "opus": ("OGG", "OPUS"), "flac": ("FLAC", "PCM_16"),
             "wav": ("WAV", "PCM_16")}
PCM_RATE = 24_000
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
STREAM_MP3 = {"bitrate_mode": "CONSTANT", "compression_level": 0.5}  # about 64-96 kbit/s at speech rates


def unwritable(fmt: str) -> str | None:
    """Why this install cannot write `fmt` (a sentence for a 400), or None when it can."""
    if fmt == "pcm":
        return None
    if fmt not in SOUNDFILE:
        usable = [f for f in FORMATS if f in SOUNDFILE and unwritable(f) is None] + ["pcm"]
        return (f"response_format '{fmt}' needs an encoder this server does not have (libsndfile writes no "
                f"AAC); use one of {', '.join(usable)}.")
    import soundfile as sf

    container, codec = SOUNDFILE[fmt]
    if not sf.check_format(container, codec):
        return (f"response_format '{fmt}' needs libsndfile with {codec} support (this one is "
                f"{sf.__libsndfile_version__}); use wav, flac or pcm.")
    return None


def check_format(fmt: str) -> None:
    """400 (param `response_format`) when this install cannot write `fmt`."""
    reason = unwritable(fmt)
    if reason:
        raise InvalidRequest(reason, param="response_format")


def output_rate(fmt: str, rate: int) -> int:
    """The sample rate `fmt` is written at for audio made at `rate`."""
    if fmt == "pcm":
        return PCM_RATE
    if fmt == "mp3":
        return rate if rate in MP3_RATES else next((r for r in MP3_RATES if r > rate), MP3_RATES[-1])
    if fmt == "opus":
        return rate if rate in OPUS_RATES else OPUS_RATES[-1]
    return rate


def to_int16(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1] (clipped) as 16-bit little-endian PCM."""
    clipped = np.clip(np.nan_to_num(samples, nan=0.0), -1.0, 1.0)
    return (np.round(clipped * 32767.0)).astype("<i2").tobytes()


def encode_file(samples: np.ndarray, rate: int, fmt: str) -> bytes:
    """A whole file of mono float32 `samples` made at `rate`, in `fmt`."""
    import soundfile as sf

    target = output_rate(fmt, rate)
    samples = resample(samples, rate, target)
    if fmt == "pcm":
        return to_int16(samples)
    container, codec = SOUNDFILE[fmt]
    buf = io.BytesIO()
    sf.write(buf, np.clip(samples, -1.0, 1.0), target, format=container, subtype=codec)
    return buf.getvalue()


def wav_stream_header(rate: int) -> bytes:
    """A 16-bit mono WAV header whose sizes say "until the end of the stream" (0xFFFFFFFF)."""
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt " + struct.pack("<I", len(fmt)) + fmt + \
        b"data" + struct.pack("<I", 0xFFFFFFFF)


class _Sink:
    """A write-only file for libsndfile that keeps what it appends. Rewrites of bytes already handed out
    (the header fix-ups libsndfile makes when it closes a file) are dropped: a stream cannot take them back."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.pos = 0
        self.sent = 0

    def write(self, chunk: Any) -> int:
        chunk = bytes(chunk)
        end = self.pos + len(chunk)
        if end > len(self.data):
            self.data.extend(bytes(end - len(self.data)))
        lo = max(self.pos, self.sent)
        if lo < end:
            self.data[lo:end] = chunk[lo - self.pos:]
        self.pos = end
        return len(chunk)

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.pos + offset if whence == 1 else len(self.data) + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, size: int = -1) -> bytes:  # libsndfile asks for a readable file; nothing is read back
        return b""

    def take(self) -> bytes:
        out = bytes(self.data[self.sent:])
        self.sent = len(self.data)
        return out


class StreamEncoder:
    """Encodes audio piece by piece: `push(samples)` returns the bytes ready so far, `finish()` the rest.

    Thread-safe: a stream whose client went away may `close()` it from the event loop while the model's worker
    thread is still encoding its last piece (pushes after that give nothing).
    """

    def __init__(self, fmt: str, rate: int) -> None:
        self.fmt = fmt
        self.rate = rate
        self.target = output_rate(fmt, rate)
        self._lock = threading.Lock()
        self._started = False
        self.finished = False
        self._sink: _Sink | None = None
        self._file: Any = None
        if fmt in SOUNDFILE and fmt != "wav":
            import soundfile as sf

            container, codec = SOUNDFILE[fmt]
            self._sink = _Sink()
            self._file = sf.SoundFile(self._sink, "w", samplerate=self.target, channels=1, format=container,
                                      subtype=codec, **(STREAM_MP3 if fmt == "mp3" else {}))

    def push(self, samples: np.ndarray) -> bytes:
        """Encode mono float32 samples made at the model's rate; the bytes ready so far."""
        samples = resample(samples, self.rate, self.target)
        with self._lock:
            if self.finished:
                return b""
            if self._sink is None:  # pcm, wav
                head = wav_stream_header(self.target) if self.fmt == "wav" and not self._started else b""
                self._started = True
                return head + to_int16(samples)
            self._file.write(np.clip(samples, -1.0, 1.0))
            return self._sink.take()

    def finish(self) -> bytes:
        """The last bytes (encoder flush); a WAV with no audio at all is still a valid, empty file."""
        with self._lock:
            if self.finished:
                return b""
            self.finished = True
            if self._sink is None:
                return wav_stream_header(self.target) if self.fmt == "wav" and not self._started else b""
            self._file.close()
            return self._sink.take()

    def close(self) -> None:
        """Drop the encoder (a stream that ended early); later pushes give nothing."""
        with self._lock:
            if self._file is not None and not self.finished:
                self._file.close()
            self.finished = True
