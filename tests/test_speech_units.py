"""The pieces of text to speech without a server: sentence splitting, voices, speed, fades, the encoders (whole
files and streams), and how a speech model's kind and category are read from its config."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from core.detect import detect_category
from core.errors import InvalidRequest
from core.resolve import ModelSpec
from models.speech.encode import PCM_RATE, StreamEncoder, encode_file, output_rate, unwritable
from models.speech.loader import detect_kind
from models.speech.model import change_speed, fade
from models.speech.text import split_text
from models.speech.voices import pick_voice


def tone(seconds: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.4 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


@pytest.mark.parametrize(("text", "pieces"), [
    ("Hello there. How are you? Fine!", ["Hello there.", "How are you? Fine!"]),  # "Fine!" is short: joined
    ("Dr. Smith went home.\n\nThe end of the story", ["Dr. Smith went home.", "The end of the story"]),
    ("Pi is 3.14 exactly... or is it? “Yes,” she said.", ["Pi is 3.14 exactly...", "or is it? “Yes,” she said."]),
    ("今日は良い天気ですね。元気ですか？はい、元気です。", ["今日は良い天気ですね。元気ですか？はい、元気です。"]),
    ("  \n ", []),
])
def test_split_at_sentences(text: str, pieces: list[str]) -> None:
    assert split_text(text, 400) == pieces


def test_a_long_sentence_is_cut_at_clauses_then_words_then_anywhere() -> None:
    text = "The quick brown fox jumps over the lazy dog, and then it runs away; far away."
    assert split_text(text, 30) == ["The quick brown fox jumps over", "the lazy dog,", "and then it runs away;",
                                    "far away."]
    assert split_text("x" * 70, 30) == ["x" * 30, "x" * 30, "x" * 10]
    words = " ".join(["word"] * 200)
    assert all(len(p) <= 50 for p in split_text(words, 50)) and " ".join(split_text(words, 50)) == words


def test_voices() -> None:
    assert pick_voice(None, (), None, "m") == (None, False)
    assert pick_voice("alloy", (), None, "m") == (None, True)  # one voice: anything goes, reported
    assert pick_voice("default", (), None, "m") == (None, False)
    voices = ("alice", "bob")
    assert pick_voice(None, voices, "alice", "m") == ("alice", False)
    assert pick_voice("default", voices, "alice", "m") == ("alice", False)
    assert pick_voice("bob", voices, "alice", "m") == ("bob", False)
    with pytest.raises(InvalidRequest) as info:
        pick_voice("carol", voices, "alice", "m")
    assert info.value.param == "voice" and "alice, bob" in info.value.message
    many = tuple(f"v{i}" for i in range(100))
    with pytest.raises(InvalidRequest) as info:
        pick_voice("x", many, "v0", "m")
    assert "(100 in all)" in info.value.message and "v99" not in info.value.message


@pytest.mark.parametrize("speed", [0.25, 0.5, 1.0, 1.5, 4.0])
def test_change_speed_shortens_by_the_factor(speed: float) -> None:
    out = change_speed(tone(1.0), speed)
    assert len(out) == pytest.approx(16000 / speed, abs=1)


def test_fades_start_and_end_at_zero() -> None:
    x = np.ones(1000, np.float32)
    y = fade(x, 16000)
    assert y[0] == 0 and y[-1] == 0 and y[500] == 1 and (np.diff(y[:80]) >= 0).all()
    assert fade(np.ones(3, np.float32), 16000).shape == (3,)


def test_output_rates() -> None:
    assert output_rate("pcm", 16000) == PCM_RATE == 24000
    assert [output_rate("opus", r) for r in (16000, 22050, 24000, 44100)] == [16000, 48000, 24000, 48000]
    assert [output_rate("mp3", r) for r in (16000, 22050, 44100, 96000, 20000)] == [16000, 22050, 44100, 48000,
                                                                                    22050]
    assert output_rate("flac", 22050) == output_rate("wav", 22050) == 22050
    assert unwritable("aac") and unwritable("wav") is None and unwritable("mp3") is None


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "opus"])
def test_a_whole_file_and_a_stream_decode_alike(fmt: str) -> None:
    import soundfile as sf

    rate = 22050
    pieces = [tone(0.7, rate), tone(0.5, rate), tone(0.9, rate)]
    whole = encode_file(np.concatenate(pieces), rate, fmt)
    data, got_rate = sf.read(io.BytesIO(whole))
    assert got_rate == output_rate(fmt, rate) and data.ndim == 1
    assert len(data) / got_rate == pytest.approx(2.1, abs=0.01)
    encoder = StreamEncoder(fmt, rate)
    chunks = [encoder.push(p) for p in pieces] + [encoder.finish()]
    if fmt != "opus":  # Ogg pages are written when full
        assert all(chunks[:3])
    if fmt == "flac":
        return  # STREAMINFO of unknown length: libsndfile reads only complete FLAC files
    with sf.SoundFile(io.BytesIO(b"".join(chunks))) as f:
        streamed = f.read()
        assert f.samplerate == got_rate and f.channels == 1
    assert len(streamed) / got_rate == pytest.approx(2.1, abs=0.15 if fmt == "mp3" else 0.01)


def test_pcm_is_24k_int16_little_endian() -> None:
    out = encode_file(np.array([0.0, 1.0, -1.0, 2.0] * 2000, np.float32), 24000, "pcm")
    values = np.frombuffer(out, "<i2")
    assert len(values) == 8000 and values[:4].tolist() == [0, 32767, -32767, 32767]  # clipped, not wrapped
    assert len(encode_file(tone(1.0), 16000, "pcm")) == 2 * 24000
    encoder = StreamEncoder("pcm", 16000)
    assert len(encoder.push(tone(0.5))) == 2 * 12000 and encoder.finish() == b""


@pytest.mark.parametrize(("config", "kind", "category"), [
    ({"model_type": "vits", "architectures": ["VitsModel"]}, "vits", "speech"),
    ({"model_type": "speecht5", "architectures": ["SpeechT5ForTextToSpeech"]}, "speecht5", "speech"),
    ({"model_type": "speecht5", "architectures": ["SpeechT5ForSpeechToText"]}, None, None),
    ({"model_type": "bark", "architectures": ["BarkModel"]}, "bark", "speech"),
    ({"model_type": "musicgen", "architectures": ["MusicgenForConditionalGeneration"]}, "pipeline", "speech"),
    ({"model_type": "seamless_m4t", "architectures": ["SeamlessM4TForTextToSpeech"]}, "pipeline", "speech"),
    ({"model_type": "bert", "architectures": ["BertModel"]}, None, "encoder"),
    ({"model_type": "whisper", "architectures": ["WhisperForConditionalGeneration"]}, None, "audio"),
])
def test_kind_and_category_from_the_config(tmp_path: Path, config: dict[str, object], kind: str | None,
                                           category: str | None) -> None:
    assert detect_kind(config) == kind
    (tmp_path / "config.json").write_text(json.dumps(config))
    spec = ModelSpec(requested="m", key="m", category="speech", path=tmp_path)
    assert detect_category(spec) == category
