"""The audio routes over HTTP with the tiny Whisper and the tiny CTC model (see tests/fixtures/audio.py)."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import make_settings
from tests.fixtures.audio import bursts, make_audio

WAV_5S = make_audio(5.0, rate=44100, channels=2)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One app for the module, so each tiny model loads once."""
    from server import create_app

    app = create_app(make_settings(tmp_path_factory.mktemp("audio-app"), max_audio_seconds=120))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def post(client: TestClient, model: Path, data: bytes = WAV_5S, route: str = "transcriptions",
         name: str = "speech.wav", **fields: Any) -> Any:
    form = {"model": str(model), **{k: v if isinstance(v, list) else str(v) for k, v in fields.items()}}
    return client.post(f"/v1/audio/{route}", data=form, files={"file": (name, data, "application/octet-stream")})


def wav(samples: Any, rate: int = 16000) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def assert_error(resp: Any, status: int, param: str | None, code: str = "invalid_value") -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["param"] == param and err["code"] == code
    assert resp.json()["detail"] == err["message"]
    return err


# ----- Whisper ------------------------------------------------------------------------------------
def test_multipart_json_detects_german(client: TestClient, tiny_whisper_path: Path) -> None:
    resp = post(client, tiny_whisper_path)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json()["text"] == "hallo welt"


@pytest.mark.parametrize("wrap", [lambda b: base64.b64encode(b).decode(),
                                  lambda b: "data:audio/wav;base64," + base64.b64encode(b).decode()])
def test_json_body_with_base64_or_data_url(client: TestClient, tiny_whisper_path: Path, wrap: Any) -> None:
    resp = client.post("/v1/audio/transcriptions", json={"model": str(tiny_whisper_path), "file": wrap(WAV_5S),
                                                         "response_format": "verbose_json", "n_ctx": 5})
    assert resp.status_code == 200, resp.text
    assert resp.json()["text"] == "hallo welt" and resp.json()["duration"] == pytest.approx(5.0)


@pytest.mark.parametrize(("fmt", "subtype", "rate", "channels"), [
    ("WAV", "PCM_U8", 8000, 1), ("WAV", "PCM_24", 48000, 2), ("WAV", "FLOAT", 22050, 6),
    ("FLAC", "PCM_16", 44100, 2), ("OGG", "VORBIS", 32000, 1), ("MP3", "MPEG_LAYER_III", 24000, 2)])
def test_every_format_rate_and_channel_count(client: TestClient, tiny_whisper_path: Path, fmt: str,
                                             subtype: str, rate: int, channels: int) -> None:
    data = make_audio(3.0, rate=rate, channels=channels, fmt=fmt, subtype=subtype)
    resp = post(client, tiny_whisper_path, data, name=f"a.{fmt.lower()}", response_format="verbose_json")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["text"] == "hallo welt" and body["language"] == "german"
    assert body["duration"] == pytest.approx(3.0, abs=0.06)


def test_text_is_stripped_plain_text(client: TestClient, tiny_whisper_path: Path) -> None:
    resp = post(client, tiny_whisper_path, response_format="text")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/plain; charset=utf-8"
    assert resp.text == "hallo welt"


def test_srt_and_vtt_are_subtitle_files(client: TestClient, tiny_whisper_path: Path) -> None:
    srt = post(client, tiny_whisper_path, response_format="srt")
    assert srt.headers["content-type"] == "text/plain; charset=utf-8"
    assert re.fullmatch(r"1\n00:00:00,000 --> 00:00:0[15],000\nhallo welt\n", srt.text), srt.text
    vtt = post(client, tiny_whisper_path, response_format="vtt")
    assert vtt.headers["content-type"].startswith("text/vtt")
    assert re.fullmatch(r"WEBVTT\n\n00:00:00\.000 --> 00:00:0[15]\.000\nhallo welt\n", vtt.text), vtt.text


def test_verbose_json_has_real_duration_language_and_segments(client: TestClient,
                                                              tiny_whisper_path: Path) -> None:
    body = post(client, tiny_whisper_path, response_format="verbose_json").json()
    assert body["task"] == "transcribe" and body["language"] == "german"
    assert body["duration"] == pytest.approx(5.0)
    assert body["usage"] == {"type": "duration", "seconds": 5}
    [seg] = body["segments"]
    assert seg["id"] == 0 and seg["start"] == 0.0 and 0.0 < seg["end"] <= 5.0
    assert seg["text"] == " hallo welt" and "words" not in body


def test_word_timestamps(client: TestClient, tiny_whisper_path: Path) -> None:
    resp = post(client, tiny_whisper_path, response_format="verbose_json",
                **{"timestamp_granularities[]": ["word", "segment"]})
    body = resp.json()
    assert [w["word"] for w in body["words"]] == ["hallo", "welt"]
    times = [t for w in body["words"] for t in (w["start"], w["end"])]
    assert times == sorted(times) and 0 <= times[0] and times[-1] <= body["duration"]
    assert "X-Ignored-Params" not in resp.headers


def test_given_language_is_used(client: TestClient, tiny_whisper_path: Path) -> None:
    body = post(client, tiny_whisper_path, language="en", response_format="verbose_json").json()
    assert body["text"] == "good morning" and body["language"] == "english"


def test_unknown_language_is_a_400(client: TestClient, tiny_whisper_path: Path) -> None:
    assert_error(post(client, tiny_whisper_path, language="klingon"), 400, "language")


def test_translation_keeps_the_detected_source_language(client: TestClient, tiny_whisper_path: Path) -> None:
    # The model says " good morning" whenever it is told the source is English; translating German says
    # " hello world": forcing the source to English would show.
    body = post(client, tiny_whisper_path, route="translations", response_format="verbose_json").json()
    assert body["task"] == "translate" and body["language"] == "english"
    assert body["text"] == "hello world"
    given = post(client, tiny_whisper_path, route="translations", language="de").json()
    assert given["text"] == "hello world"


def test_one_loaded_copy_serves_both_routes(client: TestClient, tiny_whisper_path: Path) -> None:
    post(client, tiny_whisper_path)
    post(client, tiny_whisper_path, route="translations")
    entries = [e for e in client.app.state.manager.entries() if e.spec.key == str(tiny_whisper_path)]
    assert len(entries) == 1 and entries[0].spec.category == "audio"
    assert entries[0].model.capabilities == {"transcribe", "translate"}


def test_prompt_and_temperature_are_accepted(client: TestClient, tiny_whisper_path: Path) -> None:
    resp = post(client, tiny_whisper_path, prompt="Names: Ada, Bob.", temperature=0.3)
    assert resp.status_code == 200 and isinstance(resp.json()["text"], str)
    assert "X-Ignored-Params" not in resp.headers


def test_long_audio_is_chunked_with_increasing_timestamps(client: TestClient, tiny_whisper_path: Path) -> None:
    data = make_audio(75.0, rate=16000, fmt="FLAC", subtype="PCM_16")
    body = post(client, tiny_whisper_path, data, name="long.flac", response_format="verbose_json").json()
    assert body["duration"] == pytest.approx(75.0)
    starts = [s["start"] for s in body["segments"]]
    assert starts == [0.0, 30.0, 60.0]  # one answer per 30 s window, each at its window's offset
    assert all(s["start"] <= s["end"] <= body["duration"] for s in body["segments"])
    assert body["text"] == "hallo welt hallo welt hallo welt"
    srt = post(client, tiny_whisper_path, data, name="long.flac", response_format="srt").text
    assert re.search(r"^3\n00:01:00,000 --> 00:01:(01|15),000\nhallo welt$", srt, re.M), srt


# ----- CTC ----------------------------------------------------------------------------------------
def test_ctc_words_mark_the_sounds(client: TestClient, tiny_ctc_path: Path) -> None:
    data = wav(bursts([(0.5, 1.5), (2.5, 3.5)], 4.0))
    resp = post(client, tiny_ctc_path, data, response_format="verbose_json",
                **{"timestamp_granularities[]": ["word"]})
    body = resp.json()
    assert body["text"] == "A A" and body["language"] is None and body["duration"] == pytest.approx(4.0)
    assert [(w["start"], w["end"]) for w in body["words"]] == [pytest.approx((0.5, 1.5), abs=0.05),
                                                                pytest.approx((2.5, 3.5), abs=0.05)]
    assert len(body["segments"]) == 2  # a 1 s pause starts a new segment


def test_ctc_long_audio_timestamps_do_not_drift(client: TestClient, tiny_ctc_path: Path) -> None:
    spans = [(s, s + 1.0) for s in range(1, 74, 4)]
    data = wav(bursts(spans, 75.0, freq=700))
    body = post(client, tiny_ctc_path, data, response_format="verbose_json",
                **{"timestamp_granularities[]": "word"}).json()
    assert [(w["start"], w["end"]) for w in body["words"]] == [pytest.approx(s, abs=0.05) for s in spans]


def test_ctc_cannot_translate(client: TestClient, tiny_ctc_path: Path) -> None:
    assert_error(post(client, tiny_ctc_path, route="translations"), 400, "model", "unsupported_model_type")


def test_ctc_reports_fields_it_cannot_honour(client: TestClient, tiny_ctc_path: Path) -> None:
    resp = post(client, tiny_ctc_path, wav(bursts([(0.2, 0.8)], 1.0)), language="en", prompt="hi",
                temperature=0.5, response_format="srt")
    assert resp.status_code == 200
    assert set(resp.headers["X-Ignored-Params"].split(",")) == {"language", "prompt", "temperature"}
    assert resp.text.startswith("1\n00:00:00,2")


def test_a_model_that_is_not_speech_is_a_400(client: TestClient, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "bert", "architectures": ["BertModel"]}')
    assert_error(post(client, tmp_path), 400, "model", "unsupported_model_type")


# ----- bad requests -------------------------------------------------------------------------------
@pytest.mark.parametrize("data", [b"", b"this is not audio" * 40, WAV_5S[: len(WAV_5S) // 3],
                                  make_audio(2.0, fmt="FLAC", subtype="PCM_16")[:3000]])
def test_bad_uploads_are_a_400_on_file(client: TestClient, tiny_whisper_path: Path, data: bytes) -> None:
    assert_error(post(client, tiny_whisper_path, data), 400, "file")


def test_missing_file_and_bad_base64(client: TestClient, tiny_whisper_path: Path) -> None:
    assert_error(client.post("/v1/audio/transcriptions", data={"model": str(tiny_whisper_path)}), 400, "file")
    assert_error(client.post("/v1/audio/transcriptions", json={"model": str(tiny_whisper_path)}), 400, "file")
    assert_error(client.post("/v1/audio/transcriptions", json={"file": "@@not base64@@"}), 400, "file")


def test_too_long_audio_is_a_400(client: TestClient, tiny_whisper_path: Path) -> None:
    err = assert_error(post(client, tiny_whisper_path, make_audio(121.0, rate=8000)), 400, "file")
    assert "at most 120 s" in err["message"]


@pytest.mark.parametrize(("field", "value"), [("response_format", "mp3"), ("temperature", "1.5"),
                                              ("temperature", "hot")])
def test_bad_fields_are_a_400_naming_them(client: TestClient, tiny_whisper_path: Path, field: str,
                                          value: str) -> None:
    assert_error(post(client, tiny_whisper_path, **{field: value}), 400, field)


def test_timestamp_granularities_need_verbose_json(client: TestClient, tiny_whisper_path: Path) -> None:
    resp = post(client, tiny_whisper_path, **{"timestamp_granularities[]": ["word"]})
    assert resp.status_code == 200 and resp.headers["X-Ignored-Params"] == "timestamp_granularities"
    bad = post(client, tiny_whisper_path, **{"timestamp_granularities[]": ["sentence"]})
    assert_error(bad, 400, "timestamp_granularities.0")


# ----- the official OpenAI SDK --------------------------------------------------------------------
def test_openai_sdk_transcriptions_and_translations(client: TestClient, tiny_whisper_path: Path) -> None:
    from openai import OpenAI

    sdk = OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client)
    model = str(tiny_whisper_path)
    assert sdk.audio.transcriptions.create(model=model, file=("a.wav", WAV_5S)).text == "hallo welt"
    verbose = sdk.audio.transcriptions.create(model=model, file=("a.mp3", make_audio(2.0, fmt="MP3")),
                                              response_format="verbose_json",
                                              timestamp_granularities=["word", "segment"])
    assert verbose.language == "german" and verbose.duration == pytest.approx(2.0, abs=0.06)
    assert [w.word for w in verbose.words] == ["hallo", "welt"] and verbose.segments[0].text == " hallo welt"
    text = sdk.audio.transcriptions.create(model=model, file=("a.wav", WAV_5S), response_format="text")
    assert text == "hallo welt"
    assert sdk.audio.translations.create(model=model, file=("a.wav", WAV_5S)).text == "hello world"
    srt = sdk.audio.translations.create(model=model, file=("a.wav", WAV_5S), response_format="srt")
    assert "hello world" in srt
