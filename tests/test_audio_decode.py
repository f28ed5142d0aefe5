"""Audio decoding (every format, sample rate and channel count; bad uploads) and subtitle formatting."""

from __future__ import annotations

import io
import re
import wave

import numpy as np
import pytest

from core.audio import decode_audio, read_audio, resample
from core.errors import InvalidRequest
from core.subtitles import Segment, Transcript, Word, timestamp, to_srt, to_verbose_json, to_vtt
from tests.fixtures.audio import make_audio

FORMATS = [("WAV", "PCM_U8"), ("WAV", "PCM_16"), ("WAV", "PCM_24"), ("WAV", "PCM_32"), ("WAV", "FLOAT"),
           ("FLAC", "PCM_16"), ("FLAC", "PCM_24"), ("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")]


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


@pytest.mark.parametrize(("fmt", "subtype"), FORMATS)
def test_every_format_decodes_to_mono_16k_with_its_real_duration(fmt: str, subtype: str) -> None:
    data = make_audio(1.5, rate=44100, channels=2, fmt=fmt, subtype=subtype, freq=500)
    audio = decode_audio(data, 16000)
    assert audio.rate == 16000 and audio.samples.ndim == 1 and audio.samples.dtype == np.float32
    assert audio.duration == pytest.approx(1.5, abs=0.06)  # MP3/Vorbis frames round a little
    # both channels' tones (500 Hz left, 750 Hz right) survive the down-mix and the resampling
    assert peak_hz(audio.samples, 16000) == pytest.approx(500, abs=10) or \
        peak_hz(audio.samples, 16000) == pytest.approx(750, abs=10)
    spectrum = np.abs(np.fft.rfft(audio.samples))
    freqs = np.fft.rfftfreq(len(audio.samples), 1 / 16000)
    assert spectrum[np.abs(freqs - 500) < 5].max() > 0.5 * spectrum.max()
    assert spectrum[np.abs(freqs - 750) < 5].max() > 0.5 * spectrum.max()


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 32000, 44100, 48000, 96000])
def test_any_sample_rate_is_resampled_without_shifting_pitch(rate: int) -> None:
    audio = decode_audio(make_audio(1.0, rate=rate, freq=1000), 16000)
    assert len(audio.samples) == 16000
    assert peak_hz(audio.samples, 16000) == pytest.approx(1000, abs=5)


def test_resampling_filters_what_the_target_rate_cannot_hold() -> None:
    rate = 48000
    t = np.arange(rate) / rate
    tone = (0.5 * np.sin(2 * np.pi * 12000 * t)).astype(np.float32)  # above 16 kHz's Nyquist (8 kHz)
    out = resample(tone, rate, 16000)
    assert np.sqrt(np.mean(out ** 2)) < 0.01  # no alias at 4 kHz


@pytest.mark.parametrize("channels", [1, 2, 6])
def test_channels_are_averaged(channels: int) -> None:
    audio = read_audio(make_audio(0.5, rate=16000, channels=channels, fmt="WAV", subtype="FLOAT"))
    assert audio.samples.ndim == 1 and len(audio.samples) == 8000


def test_downmix_is_the_mean_of_the_channels() -> None:
    import soundfile as sf

    left = np.full(1600, 0.5, dtype=np.float32)
    right = np.full(1600, -0.25, dtype=np.float32)
    buf = io.BytesIO()
    sf.write(buf, np.stack([left, right], 1), 16000, format="WAV", subtype="FLOAT")
    assert np.allclose(read_audio(buf.getvalue()).samples, 0.125)


def _bad(data: bytes, **kw: float) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        decode_audio(data, 16000, **kw)
    assert info.value.param == "file"
    return info.value


def test_empty_upload_is_a_400_on_file() -> None:
    assert "empty" in _bad(b"").message


def test_non_audio_is_a_400_on_file() -> None:
    assert "decode" in _bad(b"%PDF-1.4 this is not audio at all" * 20).message
    _bad(bytes(range(256)) * 10)


@pytest.mark.parametrize(("fmt", "subtype"), [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS"),
                                               ("MP3", "MPEG_LAYER_III")])
def test_truncated_files_are_a_400_on_file(fmt: str, subtype: str) -> None:
    data = make_audio(2.0, rate=22050, fmt=fmt, subtype=subtype)
    _bad(data[: len(data) // 2])


def test_header_only_wav_is_a_400() -> None:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
    _bad(buf.getvalue())


def test_streamed_wav_with_open_size_is_accepted() -> None:
    data = bytearray(make_audio(0.5, rate=16000, fmt="WAV", subtype="PCM_16"))
    at = data.index(b"data")
    data[at + 4:at + 8] = b"\xff\xff\xff\xff"  # what streaming writers leave when the length is unknown
    assert read_audio(bytes(data)).duration == pytest.approx(0.5, abs=0.01)


def test_audio_longer_than_the_limit_is_a_400() -> None:
    err = _bad(make_audio(3.0, rate=8000), max_seconds=2.0)
    assert "at most 2 s" in err.message
    assert decode_audio(make_audio(3.0, rate=8000), 16000, max_seconds=3.0).duration == pytest.approx(3.0)


# ----- subtitles ----------------------------------------------------------------------------------
SEGMENTS = [Segment(0.0, 1.5, " Hello there."), Segment(1.5, 3.25, " General --> Kenobi!"),
            Segment(3.25, 3.25, "   "), Segment(3725.5, 3727.0, " late")]


def test_timestamps_format_hours_minutes_seconds_millis() -> None:
    assert timestamp(0, ",") == "00:00:00,000"
    assert timestamp(3725.5004, ".") == "01:02:05.500"
    assert timestamp(360000.0, ",") == "100:00:00,000"


def test_srt_is_a_valid_subrip_file() -> None:
    srt = to_srt(SEGMENTS)
    blocks = srt.strip("\n").split("\n\n")
    assert len(blocks) == 3  # the blank segment is not a cue
    cue = re.compile(r"^(\d+)\n(\d{2,}:\d{2}:\d{2},\d{3}) --> (\d{2,}:\d{2}:\d{2},\d{3})\n(.+)$", re.S)
    for i, block in enumerate(blocks, start=1):
        m = cue.match(block)
        assert m and int(m.group(1)) == i and "-->" not in m.group(4)
    assert blocks[0] == "1\n00:00:00,000 --> 00:00:01,500\nHello there."
    assert blocks[2].startswith("3\n01:02:05,500 --> 01:02:07,000")


def test_vtt_is_a_valid_webvtt_file() -> None:
    vtt = to_vtt(SEGMENTS)
    assert vtt.startswith("WEBVTT\n\n")
    cues = vtt[len("WEBVTT\n\n"):].strip("\n").split("\n\n")
    assert cues[0] == "00:00:00.000 --> 00:00:01.500\nHello there."
    assert all(re.match(r"^\d{2,}:\d{2}:\d{2}\.\d{3} --> \d{2,}:\d{2}:\d{2}\.\d{3}\n\S", c) for c in cues)


def test_verbose_json_has_openai_fields() -> None:
    tr = Transcript(text=" Hello there. ", segments=SEGMENTS[:2], language="english",
                    words=[Word("Hello", 0.0, 0.5)])
    body = to_verbose_json(tr, "transcribe", 3.2501, with_words=True)
    assert body["task"] == "transcribe" and body["language"] == "english" and body["duration"] == 3.25
    assert body["text"] == "Hello there."
    assert [s["id"] for s in body["segments"]] == [0, 1]
    assert {"id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob", "compression_ratio",
            "no_speech_prob"} <= set(body["segments"][0])
    assert body["words"] == [{"word": "Hello", "start": 0.0, "end": 0.5}]
    assert "words" not in to_verbose_json(tr, "transcribe", 3.25, with_words=False)
