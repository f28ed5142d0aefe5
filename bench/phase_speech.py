"""Speech: real-time factor (processing seconds / audio seconds) of text to speech, server vs direct call.

Model: a small random VITS built like tests/fixtures/speech.py's tiny one but at about a third of MMS-TTS's
sizes (hidden 96, 3 text-encoder layers, HiFi-GAN from 256 channels, hop 256 at 16 kHz, ~7M parameters),
every token lasting 2 frames (a character about 64 ms, as real speech), kept in a cache folder under the
system temp dir. Input: six sentences, about 25 s of audio (two with --quick).
Ours: `POST /v1/audio/speech` (`response_format: wav`): sentence split, the model on its worker thread piece
by piece, fades and pauses, WAV encoding, HTTP. Baseline: the same work in this process: the same sentence
pieces, the tokenizer and `VitsModel` forward for each, concatenation, `soundfile` WAV encoding.
Target: <= 1.2x. Also reported: time to the first audio bytes of a stream (`stream_format: audio`) against the
direct call on the first sentence alone.
"""

from __future__ import annotations

import io
import tempfile
import time
from pathlib import Path

from bench.harness import Harness, Stats, timed

PHASE = "speech"
CACHE = Path(tempfile.gettempdir()) / "ur-bench-speech-v1"
SMALL = {"hidden_size": 96, "num_hidden_layers": 3, "ffn_dim": 384, "flow_size": 96, "spectrogram_bins": 129,
         "upsample_initial_channel": 256, "upsample_rates": [8, 8, 2, 2], "upsample_kernel_sizes": [16, 16, 4, 4],
         "resblock_kernel_sizes": [3, 7], "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]],
         "duration_predictor_filter_channels": 96, "prior_encoder_num_flows": 2,
         "prior_encoder_num_wavenet_layers": 2, "wavenet_kernel_size": 5}
TEXT = ("The quick brown fox jumps over the lazy dog. Speech synthesis turns written text into audio. "
        "This benchmark compares the server with a direct call. Each sentence is spoken on its own. "
        "The pieces are joined with short pauses between them. Real time factors below one are faster than "
        "real time.")


class DirectVits:
    """The server's work done directly with transformers and soundfile."""

    def __init__(self, folder: Path) -> None:
        from transformers import AutoTokenizer, VitsModel

        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.model = VitsModel.from_pretrained(str(folder)).eval()

    def __call__(self, text: str) -> bytes:
        import numpy as np
        import soundfile as sf
        import torch

        from models.speech.text import split_text

        parts = []
        with torch.inference_mode():
            for piece in split_text(text, 400):
                ids = self.tokenizer(piece, return_tensors="pt").input_ids
                parts.append(self.model(input_ids=ids).waveform[0].numpy())
        buf = io.BytesIO()
        sf.write(buf, np.clip(np.concatenate(parts), -1, 1), self.model.config.sampling_rate, format="WAV",
                 subtype="PCM_16")
        return buf.getvalue()


def audio_seconds(data: bytes) -> float:
    import soundfile as sf

    with sf.SoundFile(io.BytesIO(data)) as f:
        return f.frames / f.samplerate


def run(h: Harness) -> None:
    from tests.fixtures.speech import build_tiny_vits

    h.apply_threads()
    folder = build_tiny_vits(CACHE / "vits-small", frames=2, **SMALL)
    text = TEXT if not h.quick else " ".join(TEXT.split(". ")[:2]) + "."
    with h.server() as srv:
        if not srv.has_route("/v1/audio/speech"):
            h.skip("text to speech", "POST /v1/audio/speech is not implemented yet")
            return
        direct = DirectVits(folder)
        body = {"model": str(folder), "input": text, "response_format": "wav"}
        first = srv.post("/v1/audio/speech", json=body)
        first.raise_for_status()
        seconds = audio_seconds(first.content)

        def ours() -> float:
            return timed(lambda: srv.post("/v1/audio/speech", json=body).raise_for_status()) / seconds

        def base() -> float:
            return timed(lambda: direct(text)) / seconds

        ours_s, base_s = h.interleave(ours, base)
        h.result(f"VITS RTF, {seconds:.0f} s of speech as WAV, ~7M-parameter VITS (HTTP vs direct)", ours_s,
                 base_s, unit="RTF", target="<=1.2",
                 note=f"RTF {ours_s.median:.4f} vs {base_s.median:.4f} "
                      f"({(ours_s.median - base_s.median) * seconds * 1000:+.0f} ms per request)")

        stream = {**body, "response_format": "pcm", "stream_format": "audio"}
        sentence = text.split(". ")[0] + "."

        def first_audio() -> float:
            start, elapsed = time.perf_counter(), float("nan")
            with srv.client.stream("POST", "/v1/audio/speech", json=stream) as r:
                for chunk in r.iter_raw():  # all of it, so the connection is reusable
                    if chunk and elapsed != elapsed:  # the first non-empty chunk (NaN until then)
                        elapsed = time.perf_counter() - start
            return elapsed

        ttfa: tuple[Stats, Stats] = h.interleave(first_audio, lambda: timed(lambda: direct(sentence)))
        h.result("time to first audio, streamed (HTTP) vs the first sentence direct", *ttfa, unit="s",
                 note=f"the whole input takes {ours_s.median * seconds:.2f} s")
