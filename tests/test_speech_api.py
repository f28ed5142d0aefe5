"""POST /v1/audio/speech over the real HTTP stack with the tiny VITS and SpeechT5 of tests/fixtures/speech.py:
every response format decodes to the expected rate, channel count and duration; duration follows the input
and `speed`; long input is split at sentences and streamed piece by piece (chunked audio and SSE); voices;
every bad field is a 400 naming it; the category works in the manager like the others."""

from __future__ import annotations

import base64
import io
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.speech.model import GAP_SECONDS
from tests.fixtures.speech import T5_SPEAKERS, VITS_RATE, vits_seconds
from tests.hardening import assert_envelope

SENTENCES = ["the quick brown fox jumps over the lazy dog.", "hello world, how are you today?",
             "pack my box with five dozen liquor jugs!"]
LONG = " ".join(SENTENCES)
FORMATS = ["mp3", "opus", "flac", "wav", "pcm"]
CONTENT_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "flac": "audio/flac", "wav": "audio/wav",
                 "pcm": "audio/pcm"}
SLACK = {"mp3": 0.08, "opus": 0.03, "flac": 0.002, "wav": 0.002, "pcm": 0.002}  # seconds of codec padding


def decode(data: bytes, fmt: str) -> tuple[np.ndarray, int, int]:
    """(samples, rate, channels) of an answer; pcm is 24 kHz 16-bit mono little-endian."""
    import soundfile as sf

    if fmt == "pcm":
        assert len(data) % 2 == 0
        return np.frombuffer(data, "<i2").astype(np.float32) / 32768.0, 24000, 1
    with sf.SoundFile(io.BytesIO(data)) as f:
        return f.read(dtype="float32"), f.samplerate, f.channels


def spoken(piece: str) -> str:
    """What the tiny VITS' tokenizer keeps of a piece: lower-case letters, spaces, apostrophes, hyphens."""
    return "".join(c for c in piece.lower() if c.isalpha() or c in " '-")


def vits_total(pieces: list[str], speed: float = 1.0) -> float:
    """The tiny VITS' duration for these pieces, pauses included."""
    spoken_seconds = [vits_seconds(spoken(p), speed) for p in pieces]
    return sum(spoken_seconds) + (len(pieces) - 1) * int(VITS_RATE * GAP_SECONDS / speed) / VITS_RATE


def speak(client: Any, model: Path, text: str = "hello world", **fields: Any) -> Any:
    return client.post("/v1/audio/speech", json={"model": str(model), "input": text, **fields})


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_decodes_to_the_rate_and_duration(client: Any, tiny_vits_path: Path, fmt: str) -> None:
    r = speak(client, tiny_vits_path, LONG, response_format=fmt)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(CONTENT_TYPES[fmt])
    samples, rate, channels = decode(r.content, fmt)
    assert (rate, channels) == (24000 if fmt == "pcm" else VITS_RATE, 1)
    assert len(samples) / rate == pytest.approx(vits_total(SENTENCES), abs=SLACK[fmt])
    assert np.abs(samples).max() > 0.05  # sound, not silence


def test_speecht5_every_format_and_its_voices(client: Any, tiny_speecht5_path: Path) -> None:
    lengths = {}
    for fmt in FORMATS:
        r = speak(client, tiny_speecht5_path, "hello world. how are you?", response_format=fmt, voice="bob")
        assert r.status_code == 200, r.text
        samples, rate, channels = decode(r.content, fmt)
        assert (rate, channels) == (24000 if fmt == "pcm" else 16000, 1)
        lengths[fmt] = len(samples) / rate
        assert "x-ignored-params" not in r.headers
    assert lengths["pcm"] == pytest.approx(lengths["wav"], abs=0.002) and lengths["wav"] > 1.0
    assert speak(client, tiny_speecht5_path, voice="alice").status_code == 200
    body = assert_envelope(speak(client, tiny_speecht5_path, voice="carol"), 400, "invalid_value", "voice")
    assert all(name in body["detail"] for name in T5_SPEAKERS), body


def test_duration_grows_with_the_input(client: Any, tiny_vits_path: Path, tiny_speecht5_path: Path) -> None:
    for model in (tiny_vits_path, tiny_speecht5_path):
        seconds = []
        for text in ("hi there", "hello there my friend", SENTENCES[0] + " " + SENTENCES[1]):
            samples, rate, _ = decode(speak(client, model, text, response_format="wav").content, "wav")
            seconds.append(len(samples) / rate)
        assert seconds[0] < seconds[1] < seconds[2], (model.name, seconds)
    exact, _, _ = decode(speak(client, tiny_vits_path, "hello there", response_format="wav").content, "wav")
    assert len(exact) / VITS_RATE == pytest.approx(vits_seconds("hello there"), abs=1e-9)


@pytest.mark.parametrize("speed", [0.25, 0.5, 2.0, 4.0])
def test_speed_changes_the_duration(client: Any, tiny_vits_path: Path, tiny_speecht5_path: Path,
                                    speed: float) -> None:
    # VITS: its own speaking rate (durations exact); SpeechT5: resampled (shorter by the factor)
    samples, rate, _ = decode(speak(client, tiny_vits_path, LONG, response_format="wav", speed=speed).content, "wav")
    assert len(samples) / rate == pytest.approx(vits_total(SENTENCES, speed), abs=1e-9)
    base, _, _ = decode(speak(client, tiny_speecht5_path, "hello world", response_format="wav").content, "wav")
    fast, _, _ = decode(speak(client, tiny_speecht5_path, "hello world", response_format="wav",
                              speed=speed).content, "wav")
    assert len(fast) == pytest.approx(len(base) / speed, abs=2)


def test_long_input_is_joined_without_clicks(client: Any, tiny_vits_path: Path) -> None:
    samples, rate, _ = decode(speak(client, tiny_vits_path, LONG, response_format="wav").content, "wav")
    start = 0
    for piece in SENTENCES:
        n = round(vits_total([piece]) * rate)
        assert abs(samples[start]) < 0.01 and abs(samples[start + n - 1]) < 0.01  # faded in and out
        gap = samples[start + n:start + n + int(rate * GAP_SECONDS)]
        assert not gap.any() or piece == SENTENCES[-1]  # silence between pieces
        start += n + int(rate * GAP_SECONDS)


@pytest.mark.parametrize("fmt", ["wav", "pcm", "mp3", "opus"])
def test_stream_format_audio_sends_a_chunk_per_sentence(client: Any, tiny_vits_path: Path, fmt: str) -> None:
    body = {"model": str(tiny_vits_path), "input": f"{LONG} {LONG}", "response_format": fmt, "stream_format": "audio"}
    with client.stream("POST", "/v1/audio/speech", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith(CONTENT_TYPES[fmt])
        chunks = [c for c in r.iter_raw() if c]
    assert len(chunks) >= (2 if fmt == "opus" else 6), [len(c) for c in chunks]  # Ogg pages hold ~1 s of Opus
    samples, rate, channels = decode(b"".join(chunks), fmt)
    assert (rate, channels) == (24000 if fmt == "pcm" else VITS_RATE, 1)
    assert len(samples) / rate == pytest.approx(vits_total(SENTENCES * 2), abs=0.2 if fmt == "mp3" else 0.03)
    if fmt == "wav":
        assert chunks[0][:4] == b"RIFF" and chunks[0][40:44] == b"\xff\xff\xff\xff"  # streaming sizes


def test_streamed_flac_is_flac_of_unknown_length(client: Any, tiny_vits_path: Path) -> None:
    body = {"model": str(tiny_vits_path), "input": LONG, "response_format": "flac", "stream_format": "audio"}
    with client.stream("POST", "/v1/audio/speech", json=body) as r:
        chunks = [c for c in r.iter_raw() if c]
    assert len(chunks) >= 3 and chunks[0][:4] == b"fLaC"
    total_samples = int.from_bytes(chunks[0][8 + 13:8 + 18], "big") & 0xFFFFFFFFF  # STREAMINFO's 36 bits
    assert total_samples == 0  # "unknown": decoders read to the end of the stream


def sse_events(text: str) -> list[dict[str, Any]]:
    frames = [f for f in text.split("\n\n") if f.strip()]
    assert all(f.startswith("data: ") for f in frames), frames
    return [json.loads(f[6:]) if f[6:] != "[DONE]" else {"type": "[DONE]"} for f in frames]


def test_sse_sends_deltas_then_done_with_usage(client: Any, tiny_vits_path: Path) -> None:
    r = speak(client, tiny_vits_path, LONG, response_format="pcm", stream_format="sse")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-cache"
    events = sse_events(r.text)
    assert [e["type"] for e in events] == ["speech.audio.delta"] * len(SENTENCES) + ["speech.audio.done"]
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert len(audio) / 2 / 24000 == pytest.approx(vits_total(SENTENCES), abs=0.002)
    usage = events[-1]["usage"]
    assert usage["input_tokens"] == sum(2 * len(spoken(s)) + 1 for s in SENTENCES)  # a blank between characters
    assert usage["output_tokens"] > 0 and usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_an_error_in_an_sse_stream_is_one_error_event_then_done(client: Any, tiny_vits_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from models.speech.vits import VitsSpeech

    real = VitsSpeech.generate
    calls: list[str] = []

    def flaky(self: Any, text: str, voice: Any, speed: float) -> Any:
        calls.append(threading.current_thread().name)
        if len(calls) == 2:
            raise RuntimeError("vocoder exploded")
        return real(self, text, voice, speed)

    monkeypatch.setattr(VitsSpeech, "generate", flaky)
    events = sse_events(speak(client, tiny_vits_path, LONG, response_format="wav", stream_format="sse").text)
    assert [e["type"] for e in events[:1]] == ["speech.audio.delta"]
    assert events[1]["error"]["type"] == "server_error" and "vocoder" not in events[1]["error"]["message"]
    assert events[-1] == {"type": "[DONE]"}
    assert all(name.startswith("model-speech") for name in calls)  # synthesis runs on the model's worker thread


def test_voices_of_a_multi_speaker_vits(client: Any, tiny_vits_speakers_path: Path) -> None:
    for voice in ("0", "2", {"id": "1"}, "default", None):
        r = speak(client, tiny_vits_speakers_path, response_format="wav", voice=voice)
        assert r.status_code == 200 and "x-ignored-params" not in r.headers, (voice, r.text)
    body = assert_envelope(speak(client, tiny_vits_speakers_path, voice="alloy"), 400, "invalid_value", "voice")
    assert "0, 1, 2" in body["detail"]


def test_a_single_voice_model_takes_any_voice_and_reports_it(client: Any, tiny_vits_path: Path) -> None:
    r = speak(client, tiny_vits_path, voice="alloy", instructions="cheerful")
    assert r.status_code == 200 and r.headers["x-ignored-params"] == "instructions,voice"
    assert "x-ignored-params" not in speak(client, tiny_vits_path).headers


@pytest.mark.parametrize(("fields", "param"), [
    ({"input": None}, "input"), ({"input": ""}, "input"), ({"input": "   "}, "input"), ({"input": 7}, "input"),
    ({"input": "!!!???"}, "input"), ({"input": "x" * 61}, "input"),
    ({"speed": 4.5}, "speed"), ({"speed": 0.2}, "speed"), ({"speed": "fast"}, "speed"),
    ({"response_format": "aac"}, "response_format"), ({"response_format": "ogg"}, "response_format"),
    ({"stream_format": "chunks"}, "stream_format"), ({"model": None}, "model"), ({"voice": 3}, "voice"),
])
def test_bad_fields_are_400s_naming_the_field(client_factory: Any, tiny_vits_path: Path, fields: dict[str, Any],
                                              param: str) -> None:
    client = client_factory(max_speech_input_chars=60)
    body = {k: v for k, v in {"model": str(tiny_vits_path), "input": "hello", **fields}.items() if v is not None}
    error = assert_envelope(client.post("/v1/audio/speech", json=body), 400, "invalid_value", param)["error"]
    if fields.get("response_format") == "aac":
        assert "aac" in error["message"].lower() and "mp3" in error["message"]
    if param == "input" and "x" in str(fields.get("input")):
        assert "60" in error["message"]


def test_a_model_of_another_category_is_400(client: Any, tiny_whisper_path: Path) -> None:
    assert_envelope(speak(client, tiny_whisper_path), 400, "unsupported_model_type", "model")


def test_the_speech_category_in_the_manager(client_factory: Any, tiny_vits_path: Path,
                                            tiny_speecht5_path: Path) -> None:
    client = client_factory(max_loaded_models=1)
    r = client.post("/v1/models/load", json={"model": str(tiny_speecht5_path), "type": "speech"})
    assert r.status_code == 200 and r.json()["type"] == "speech" and r.json()["voices"] == sorted(T5_SPEAKERS)
    assert r.json()["memory_bytes"] > 0
    r = client.post("/v1/models/load", json={"model": str(tiny_vits_path)})  # the type read from config.json
    assert r.status_code == 200 and r.json()["type"] == "speech" and r.json()["speech_kind"] == "vits"
    loaded = [m for m in client.get("/v1/models").json()["data"] if m["status"] == "loaded"]
    assert [(m["id"], m["type"]) for m in loaded] == [(str(tiny_vits_path), "speech")]  # LRU: SpeechT5 evicted
    assert client.get("/health").json()["loaded_models"] == [str(tiny_vits_path)]
    assert speak(client, tiny_speecht5_path).status_code == 200  # loaded again lazily, evicting VITS
    assert client.get("/health").json()["loaded_models"] == [str(tiny_speecht5_path)]


def test_a_client_that_goes_away_stops_the_synthesis(client: Any, tiny_vits_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from models.speech.vits import VitsSpeech

    real = VitsSpeech.generate
    calls: list[str] = []

    def counted(self: Any, text: str, voice: Any, speed: float) -> Any:
        calls.append(text)
        return real(self, text, voice, speed)

    monkeypatch.setattr(VitsSpeech, "generate", counted)
    body = {"model": str(tiny_vits_path), "input": " ".join(SENTENCES * 20), "response_format": "mp3",
            "stream_format": "audio"}
    with client.stream("POST", "/v1/audio/speech", json=body) as r:
        next(c for c in r.iter_raw() if c)
    manager = client.app.state.manager
    deadline = time.monotonic() + 10
    while any(e.active for e in manager.entries()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(e.active for e in manager.entries())  # the model was released
    assert len(calls) < 10  # of 60 pieces
    assert speak(client, tiny_vits_path).status_code == 200
