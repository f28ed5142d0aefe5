"""OpenAI SDK suite, media half: the official `openai` package against embeddings, images (generate, edit,
create_variation) and audio (transcriptions in every format, translations), in-process over the real HTTP
stack with tiny real models. Assertions are on the SDK's parsed objects."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from openai import BadRequestError, OpenAI
from openai.types.audio import Transcription, TranscriptionVerbose, Translation
from PIL import Image

from tests.conftest import make_settings
from tests.fixtures.audio import make_audio
from tests.sdk_calls import sdk_call

TEXTS = ["the cat sat on the mat", "the dog was on the mat", "what is the capital of france"]
SPEECH = make_audio(3.0, rate=22050, channels=2)


def sdk_on(client: TestClient) -> OpenAI:
    return OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client, max_retries=0)


# ----- embeddings ----------------------------------------------------------------------------------
@pytest.fixture
def embed_sdk(encoder_client: TestClient) -> OpenAI:
    """The SDK on the shared encoder app."""
    return sdk_on(encoder_client)


@sdk_call("client.embeddings.create(input=[...]) (base64, the SDK's default)", "embeddings")
def test_embeddings_default_base64(embed_sdk: OpenAI, encoder_client: TestClient, tiny_st_folder: Path) -> None:
    out = embed_sdk.embeddings.create(model=str(tiny_st_folder), input=TEXTS)
    assert out.object == "list" and out.model == str(tiny_st_folder)
    assert [d.index for d in out.data] == [0, 1, 2] and all(d.object == "embedding" for d in out.data)
    got = np.array([d.embedding for d in out.data], dtype=np.float32)
    raw = encoder_client.post("/v1/embeddings", json={"model": str(tiny_st_folder), "input": TEXTS}).json()
    assert got.tobytes() == np.array([d["embedding"] for d in raw["data"]], dtype=np.float32).tobytes()
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # the folder normalises
    assert out.usage.prompt_tokens == out.usage.total_tokens == raw["usage"]["prompt_tokens"] > 0


@sdk_call("client.embeddings.create(input='...', encoding_format='float', dimensions=N)", "embeddings")
def test_embeddings_float_and_dimensions(embed_sdk: OpenAI, tiny_st_folder: Path) -> None:
    one = embed_sdk.embeddings.create(model=str(tiny_st_folder), input=TEXTS[0], encoding_format="float")
    batch = embed_sdk.embeddings.create(model=str(tiny_st_folder), input=TEXTS, encoding_format="float")
    assert len(one.data) == 1 and len(one.data[0].embedding) == 32
    np.testing.assert_allclose(one.data[0].embedding, batch.data[0].embedding, atol=1e-5)
    short = embed_sdk.embeddings.create(model=str(tiny_st_folder), input=TEXTS[0], dimensions=8)
    assert len(short.data[0].embedding) == 8
    assert np.linalg.norm(short.data[0].embedding) == pytest.approx(1.0, abs=1e-5)


@sdk_call("client.embeddings.create(input=[[token ids], ...])", "embeddings")
def test_embeddings_token_ids(embed_sdk: OpenAI, tiny_st_folder: Path) -> None:
    out = embed_sdk.embeddings.create(model=str(tiny_st_folder), input=[[2, 60, 61, 3], [2, 62, 3]])
    assert len(out.data) == 2 and out.usage.prompt_tokens == 7


@sdk_call("client.embeddings.create(...) on an input too long: BadRequestError param input.N", "embeddings")
def test_embeddings_too_long_is_a_bad_request(embed_sdk: OpenAI, tiny_st_folder: Path) -> None:
    with pytest.raises(BadRequestError) as info:
        embed_sdk.embeddings.create(model=str(tiny_st_folder), input=["ok", "cat " * 200])
    assert info.value.param == "input.1"


# ----- vision-language chat ------------------------------------------------------------------------
@sdk_call("client.chat.completions.create(messages=[image_url part]) (vision-language model)", "chat")
def test_vision_language_chat(client: TestClient, tiny_llava: Path) -> None:
    from tests.fixtures.vision import image_b64

    content = [{"type": "text", "text": "what color"},
               {"type": "image_url", "image_url": {"url": "data:image/png;base64," + image_b64()}}]
    sdk = sdk_on(client)
    out = sdk.chat.completions.create(model=str(tiny_llava), messages=[{"role": "user", "content": content}],
                                      max_completion_tokens=5, seed=1)  # type: ignore[list-item]
    assert out.choices[0].finish_reason == "length" and out.usage is not None
    assert out.usage.completion_tokens == 5 and out.choices[0].message.content
    assert out.usage.prompt_tokens > 16  # the 16 image-patch tokens of the 32x32 image, and the words
    chunks = list(sdk.chat.completions.create(model=str(tiny_llava), messages=[{"role": "user", "content": content}],
                                              max_tokens=5, seed=1, stream=True))  # type: ignore[list-item]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == out.choices[0].message.content


# ----- images --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def images_client(tmp_path_factory: pytest.TempPathFactory, tiny_sd: Path,
                  tiny_sd_inpaint: Path) -> Iterator[TestClient]:
    """One app (one load per pipeline) for the image tests."""
    from server import create_app

    with TestClient(create_app(make_settings(tmp_path_factory.mktemp("sdk-images"))),
                    raise_server_exceptions=False) as client:
        yield client


def picture(size: tuple[int, int] = (64, 64), hole: bool = True) -> bytes:
    """An RGBA PNG; with `hole` its left half is transparent (what an edit repaints)."""
    arr = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 4), dtype=np.uint8)
    arr[..., 3] = 255
    if hole:
        arr[:, : size[0] // 2, 3] = 0
    buf = io.BytesIO()
    Image.fromarray(arr, "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def decoded(client: TestClient, item: object, fmt: str) -> Image.Image:
    """The PNG an SDK `Image` item carries (b64_json) or points to (url, fetched from the runtime)."""
    if fmt == "b64_json":
        data = base64.b64decode(item.b64_json)  # type: ignore[attr-defined]
    else:
        url = item.url  # type: ignore[attr-defined]
        assert url.startswith("http://testserver/v1/files/images/") and url.endswith(".png")
        response = client.get(url)
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        data = response.content
    return Image.open(io.BytesIO(data))


STEPS = {"num_inference_steps": 2, "seed": 7}


@pytest.mark.parametrize("fmt", ["url", "b64_json"])
@sdk_call("client.images.generate(response_format='{fmt}')", "images")
def test_images_generate(images_client: TestClient, tiny_sd: Path, fmt: str) -> None:
    out = sdk_on(images_client).images.generate(model=str(tiny_sd), prompt="a red cat", n=2, size="64x64",
                                                response_format=fmt, extra_body=STEPS)  # type: ignore[arg-type]
    assert out.created > 0 and len(out.data or []) == 2
    for item in out.data or []:
        assert item.revised_prompt == "a red cat"
        assert (item.url is None) == (fmt == "b64_json") and (item.b64_json is None) == (fmt == "url")
        assert decoded(images_client, item, fmt).size == (64, 64)


@pytest.mark.parametrize("fmt", ["url", "b64_json"])
@sdk_call("client.images.edit(image=..., response_format='{fmt}') (mask from alpha)", "images")
def test_images_edit_alpha(images_client: TestClient, tiny_sd_inpaint: Path, fmt: str) -> None:
    out = sdk_on(images_client).images.edit(model=str(tiny_sd_inpaint), image=("room.png", picture(), "image/png"),
                                            prompt="a blue sky", response_format=fmt,  # type: ignore[arg-type]
                                            extra_body=STEPS)
    [item] = out.data or []
    assert item.revised_prompt == "a blue sky" and decoded(images_client, item, fmt).size == (64, 64)


@sdk_call("client.images.edit(image=..., mask=..., n=2, size=...)", "images")
def test_images_edit_explicit_mask(images_client: TestClient, tiny_sd_inpaint: Path) -> None:
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:, 32:] = 255
    buf = io.BytesIO()
    Image.fromarray(mask, "L").save(buf, format="PNG")
    out = sdk_on(images_client).images.edit(
        model=str(tiny_sd_inpaint), image=("room.png", picture(hole=False), "image/png"),
        mask=("mask.png", buf.getvalue(), "image/png"), prompt="a tree", n=2, size="64x64",  # type: ignore[arg-type]
        response_format="b64_json", extra_body=STEPS)
    assert len(out.data or []) == 2
    assert all(decoded(images_client, item, "b64_json").size == (64, 64) for item in out.data or [])


@pytest.mark.parametrize("fmt", ["url", "b64_json"])
@sdk_call("client.images.create_variation(image=..., response_format='{fmt}')", "images")
def test_images_create_variation(images_client: TestClient, tiny_sd: Path, fmt: str) -> None:
    out = sdk_on(images_client).images.create_variation(
        model=str(tiny_sd), image=("sketch.png", picture((72, 64), hole=False), "image/png"), n=1,
        response_format=fmt, extra_body={**STEPS, "strength": 0.5})  # type: ignore[arg-type]
    [item] = out.data or []
    assert decoded(images_client, item, fmt).size == (72, 64)  # the input's size


# ----- audio ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def audio_sdk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenAI]:
    """The SDK on one app for the audio tests (each tiny model loads once)."""
    from server import create_app

    with TestClient(create_app(make_settings(tmp_path_factory.mktemp("sdk-audio"))),
                    raise_server_exceptions=False) as client:
        yield sdk_on(client)


@sdk_call("client.audio.transcriptions.create(response_format='json')", "audio")
def test_transcription_json(audio_sdk: OpenAI, tiny_whisper_path: Path) -> None:
    out = audio_sdk.audio.transcriptions.create(model=str(tiny_whisper_path), file=("speech.wav", SPEECH))
    assert isinstance(out, Transcription) and out.text == "hallo welt"


@sdk_call("client.audio.transcriptions.create(response_format='text')", "audio")
def test_transcription_text(audio_sdk: OpenAI, tiny_whisper_path: Path) -> None:
    out = audio_sdk.audio.transcriptions.create(model=str(tiny_whisper_path), file=("speech.wav", SPEECH),
                                                response_format="text")
    assert out == "hallo welt"


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
@sdk_call("client.audio.transcriptions.create(response_format='{fmt}')", "audio")
def test_transcription_subtitles(audio_sdk: OpenAI, tiny_whisper_path: Path, fmt: str) -> None:
    out = audio_sdk.audio.transcriptions.create(model=str(tiny_whisper_path), file=("speech.wav", SPEECH),
                                                response_format=fmt)  # type: ignore[call-overload]
    assert isinstance(out, str)
    sep = "," if fmt == "srt" else "."
    cue = rf"00:00:00{re.escape(sep)}000 --> 00:00:0\d{re.escape(sep)}\d{{3}}\nhallo welt\n"
    assert re.fullmatch(("1\n" if fmt == "srt" else "WEBVTT\n\n") + cue, out), out


@sdk_call("client.audio.transcriptions.create(response_format='verbose_json', "
          "timestamp_granularities=['word', 'segment'])", "audio")
def test_transcription_verbose_json(audio_sdk: OpenAI, tiny_whisper_path: Path) -> None:
    out = audio_sdk.audio.transcriptions.create(model=str(tiny_whisper_path), file=("speech.wav", SPEECH),
                                                response_format="verbose_json",
                                                timestamp_granularities=["word", "segment"])
    assert isinstance(out, TranscriptionVerbose)
    assert out.text == "hallo welt" and out.language == "german" and out.duration == pytest.approx(3.0)
    [segment] = out.segments or []
    assert segment.id == 0 and segment.start == 0.0 and 0 < segment.end <= out.duration
    assert [w.word for w in out.words or []] == ["hallo", "welt"]


@sdk_call("client.audio.transcriptions.create(file=<MP3>, language='en', prompt=..., temperature=0)", "audio")
def test_transcription_mp3_language_prompt(audio_sdk: OpenAI, tiny_whisper_path: Path) -> None:
    mp3 = make_audio(2.0, rate=24000, fmt="MP3", subtype="MPEG_LAYER_III")
    out = audio_sdk.audio.transcriptions.create(model=str(tiny_whisper_path), file=("speech.mp3", mp3),
                                                language="en", temperature=0)
    assert out.text == "good morning"  # the English answer: the given language was used, not detected
    prompted = audio_sdk.audio.transcriptions.create(model=str(tiny_whisper_path), file=("speech.mp3", mp3),
                                                     language="en", prompt="a greeting")
    assert isinstance(prompted, Transcription) and prompted.text  # the prompt conditions the decoder


@sdk_call("client.audio.transcriptions.create(...) with a CTC model (Wav2Vec2)", "audio")
def test_transcription_ctc(audio_sdk: OpenAI, tiny_ctc_path: Path) -> None:
    out = audio_sdk.audio.transcriptions.create(model=str(tiny_ctc_path), file=("speech.wav", SPEECH),
                                                response_format="verbose_json")
    assert isinstance(out, TranscriptionVerbose) and out.duration == pytest.approx(3.0)
    assert set(out.text.split()) <= {"A"}


@pytest.mark.parametrize("fmt", ["json", "text", "verbose_json"])
@sdk_call("client.audio.translations.create(response_format='{fmt}')", "audio")
def test_translation(audio_sdk: OpenAI, tiny_whisper_path: Path, fmt: str) -> None:
    out = audio_sdk.audio.translations.create(model=str(tiny_whisper_path), file=("speech.wav", SPEECH),
                                              response_format=fmt)  # type: ignore[call-overload]
    text = out if fmt == "text" else out.text
    assert text == "hello world"  # from German (detected), not forced to English
    if fmt == "json":
        assert isinstance(out, Translation)
    if fmt == "verbose_json":
        assert out.task == "translate" and out.duration == pytest.approx(3.0)  # type: ignore[union-attr]


@sdk_call("client.audio.translations.create(...) with a CTC model: BadRequestError", "audio")
def test_translation_ctc_is_a_bad_request(audio_sdk: OpenAI, tiny_ctc_path: Path) -> None:
    with pytest.raises(BadRequestError) as info:
        audio_sdk.audio.translations.create(model=str(tiny_ctc_path), file=("speech.wav", SPEECH))
    assert info.value.code == "unsupported_model_type"
