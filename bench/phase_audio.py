"""Audio: real-time factor (processing seconds / audio seconds) of speech to text, server vs direct call.

Models: the tiny trained Whisper and the tiny Wav2Vec2 CTC of tests/fixtures/audio.py (built once and kept
in a cache folder under the system temp dir, since training the Whisper takes a few seconds). Input: a
20 s, 44.1 kHz stereo 16-bit WAV (3.5 MB), and a 75 s one for Whisper's long-form path (not with --quick).
Ours: `POST /v1/audio/transcriptions` (multipart upload, decode + down-mix + resample, model worker, JSON).
Baseline: the same work in this process: soundfile read, channel mean, `resample_poly` to 16 kHz, the
processor, `generate` (Whisper, detecting the language) or the CTC forward + argmax + decode. Target: <= 1.2x.
"""

from __future__ import annotations

import io
import tempfile
from math import gcd
from pathlib import Path
from typing import Any

from bench.harness import Harness, timed

PHASE = "audio"
CACHE = Path(tempfile.gettempdir()) / "ur-bench-audio-v1"


class DirectSpeech:
    """The server's work done directly with soundfile, scipy and transformers."""

    def __init__(self, folder: Path, whisper: bool) -> None:
        from transformers import AutoModelForCTC, AutoProcessor, WhisperForConditionalGeneration

        self.whisper = whisper
        self.processor = AutoProcessor.from_pretrained(str(folder))
        cls = WhisperForConditionalGeneration if whisper else AutoModelForCTC
        self.model = cls.from_pretrained(str(folder)).eval()

    def __call__(self, data: bytes) -> str:
        import soundfile as sf
        import torch
        from scipy.signal import resample_poly

        frames, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        mono = frames.mean(axis=1)
        g = gcd(rate, 16000)
        samples = resample_poly(mono, 16000 // g, rate // g).astype("float32")
        with torch.inference_mode():
            if not self.whisper:
                inputs = self.processor(samples, sampling_rate=16000, return_tensors="pt")
                ids = self.model(inputs.input_values).logits.argmax(-1)[0]
                return str(self.processor.decode(ids))
            long_form = len(samples) > 30 * 16000
            extra = {"truncation": False, "padding": "longest"} if long_form else {}
            inputs = self.processor(samples, sampling_rate=16000, return_tensors="pt", return_attention_mask=True,
                                    **extra)
            out = self.model.generate(inputs.input_features, attention_mask=inputs.attention_mask,
                                      task="transcribe", return_timestamps=long_form)
            return str(self.processor.batch_decode(out, skip_special_tokens=True)[0])


def wav(seconds: float) -> bytes:
    from tests.fixtures.audio import make_audio

    return make_audio(seconds, rate=44100, channels=2, fmt="WAV", subtype="PCM_16")


def run(h: Harness) -> None:
    from tests.fixtures.audio import build_tiny_ctc, build_tiny_whisper

    h.apply_threads()
    whisper = build_tiny_whisper(CACHE / "whisper")
    ctc = build_tiny_ctc(CACHE / "ctc")
    short, long = wav(20.0), wav(75.0)
    with h.server() as srv:
        if not srv.has_route("/v1/audio/transcriptions"):
            h.skip("speech to text", "POST /v1/audio/transcriptions is not implemented yet")
            return
        cases: list[tuple[str, Path, bytes, float, Any]] = [
            ("Whisper RTF, 20 s 44.1 kHz stereo WAV (HTTP vs direct)", whisper, short, 20.0,
             DirectSpeech(whisper, whisper=True)),
            ("CTC RTF, 20 s 44.1 kHz stereo WAV (HTTP vs direct)", ctc, short, 20.0, DirectSpeech(ctc, False)),
        ]
        if not h.quick:
            cases.insert(1, ("Whisper RTF, 75 s long-form (HTTP vs direct)", whisper, long, 75.0,
                             DirectSpeech(whisper, True)))
        for metric, folder, data, seconds, direct in cases:
            def ours(f: Path = folder, d: bytes = data, s: float = seconds) -> float:
                return timed(lambda: srv.post("/v1/audio/transcriptions", data={"model": str(f)},
                                              files={"file": ("speech.wav", d, "audio/wav")})) / s

            def base(fn: Any = direct, d: bytes = data, s: float = seconds) -> float:
                return timed(lambda: fn(d)) / s

            ours_s, base_s = h.interleave(ours, base)
            h.result(metric, ours_s, base_s, unit="RTF", target="<=1.2",
                     note=f"RTF {ours_s.median:.4f} vs {base_s.median:.4f} "
                          f"({(ours_s.median - base_s.median) * seconds * 1000:+.0f} ms per request)")
