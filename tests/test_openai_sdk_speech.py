"""The official OpenAI SDK against POST /v1/audio/speech (in-process, over the real HTTP stack, tiny VITS):
`audio.speech.create` and `audio.speech.with_streaming_response.create` (chunked audio and SSE), errors as
the SDK's exceptions; and a round trip speech -> /v1/audio/transcriptions with the tiny Whisper."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openai import BadRequestError, OpenAI

from tests.fixtures.speech import VITS_RATE
from tests.sdk_calls import sdk_call

TEXT = "The quick brown fox jumps over the lazy dog. Hello world, how are you today? Pack my box!"


def sdk_on(client: TestClient) -> OpenAI:
    return OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client, max_retries=0)


def read(data: bytes) -> tuple[int, int, int]:
    """(frames, rate, channels) of an audio file."""
    import soundfile as sf

    with sf.SoundFile(io.BytesIO(data)) as f:
        return len(f.read()), f.samplerate, f.channels


@sdk_call("client.audio.speech.create(...) (mp3 default, wav, pcm)", "audio")
def test_speech_create(client: TestClient, tiny_vits_path: Path) -> None:
    sdk = sdk_on(client)
    mp3 = sdk.audio.speech.create(model=str(tiny_vits_path), voice="alloy", input=TEXT)
    frames, rate, channels = read(mp3.content)
    assert (rate, channels) == (VITS_RATE, 1) and frames > VITS_RATE
    assert mp3.response.headers["x-ignored-params"] == "voice"  # one voice: any voice is taken
    wav = sdk.audio.speech.create(model=str(tiny_vits_path), voice="alloy", input=TEXT, response_format="wav",
                                  speed=2.0)
    assert read(wav.content)[0] < frames  # twice as fast
    pcm = sdk.audio.speech.create(model=str(tiny_vits_path), voice="alloy", input="hello", response_format="pcm")
    assert len(pcm.content) % 2 == 0 and len(pcm.content) > 0


@sdk_call("client.audio.speech.with_streaming_response.create(..., stream_format='audio' | 'sse')", "audio")
def test_speech_streaming_response(client: TestClient, tiny_vits_path: Path) -> None:
    sdk = sdk_on(client)
    with sdk.audio.speech.with_streaming_response.create(model=str(tiny_vits_path), voice="alloy", input=TEXT,
                                                         response_format="wav", stream_format="audio") as r:
        assert r.headers["content-type"] == "audio/wav"
        chunks = [c for c in r.iter_bytes() if c]
    assert len(chunks) >= 2
    frames, rate, channels = read(b"".join(chunks))
    assert (rate, channels) == (VITS_RATE, 1) and frames > VITS_RATE
    with sdk.audio.speech.with_streaming_response.create(model=str(tiny_vits_path), voice="alloy", input=TEXT,
                                                         response_format="pcm", stream_format="sse") as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert [e["type"] for e in events] == ["speech.audio.delta"] * 3 + ["speech.audio.done"]
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert len(pcm) / 2 / 24000 == pytest.approx(frames / VITS_RATE, abs=0.002)


@sdk_call("client.audio.speech.create(...) with a bad voice or speed: BadRequestError naming the field", "errors")
def test_speech_errors(client: TestClient, tiny_vits_speakers_path: Path) -> None:
    sdk = sdk_on(client)
    with pytest.raises(BadRequestError) as info:
        sdk.audio.speech.create(model=str(tiny_vits_speakers_path), voice="alloy", input="hello")
    assert info.value.param == "voice" and "0, 1, 2" in info.value.message
    with pytest.raises(BadRequestError) as info:
        sdk.audio.speech.create(model=str(tiny_vits_speakers_path), voice="1", input="hello", speed=9)
    assert info.value.param == "speed"
    ok = sdk.audio.speech.create(model=str(tiny_vits_speakers_path), voice={"id": "2"}, input="hello")
    assert read(ok.content)[1] == VITS_RATE


def test_round_trip_speech_to_transcription(client: TestClient, tiny_vits_path: Path,
                                            tiny_whisper_path: Path) -> None:
    speech = client.post("/v1/audio/speech", json={"model": str(tiny_vits_path), "input": TEXT,
                                                   "response_format": "flac"})
    assert speech.status_code == 200
    r = client.post("/v1/audio/transcriptions", data={"model": str(tiny_whisper_path), "response_format": "json"},
                    files={"file": ("speech.flac", speech.content, "audio/flac")})
    assert r.status_code == 200, r.text
    body: Any = r.json()
    assert isinstance(body["text"], str) and body["usage"]["seconds"] >= 1  # the tiny Whisper's words don't matter
