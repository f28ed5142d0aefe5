"""Property-based fuzzing of the whole OpenAPI schema (schemathesis) against the app with tiny real models.

Every operation gets generated valid and invalid requests; the default models point at the tiny models, so a
request without a valid model still runs real code. Properties: never a 5xx, every error is the API.md
envelope, and the server still answers /health at the end. Bounded: a few examples per operation and a total
time budget (UNIVERSAL_RUNTIME_FUZZ_SECONDS, default 90), so CI stays fast; raise both to fuzz harder.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import os
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.conftest import make_settings
from tests.hardening import is_envelope, iter_routes

SEEN: defaultdict[str, Counter[int]] = defaultdict(Counter)  # statuses per operation, printed at the end
BUDGET_S = float(os.environ.get("UNIVERSAL_RUNTIME_FUZZ_SECONDS", "90"))
EXAMPLES = int(os.environ.get("UNIVERSAL_RUNTIME_FUZZ_EXAMPLES", "12"))
ONLY = os.environ.get("UNIVERSAL_RUNTIME_FUZZ_ONLY", "")  # fuzz only operations whose path contains this
RANDOM = bool(os.environ.get("UNIVERSAL_RUNTIME_FUZZ_RANDOM"))  # 1: new examples each run (bug hunting)
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not RANDOM,
                    phases=[Phase.generate], suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")
# Expensive knobs are clamped so a case costs milliseconds; their validation is tested elsewhere.
CLAMP = {"n": 2, "num_inference_steps": 2, "max_tokens": 16, "max_completion_tokens": 16, "max_length": 16,
         "top_logprobs": 3}


@pytest.fixture
def fuzz_app(tiny_lm: Any, tiny_st_folder: Path, tiny_sd: Path, tiny_vit: Path, tiny_clip: Path,
             tiny_blip_caption: Path, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """The real app, every category's default model one of the tiny models (one app per test: schemathesis'
    pytest plugin ends every ASGI lifespan after each test)."""
    from server import create_app

    defaults = {"default_chat_model": str(tiny_lm.path), "default_embedding_model": str(tiny_st_folder),
                "default_image_model": str(tiny_sd), "default_vision_model": str(tiny_vit),
                "default_clip_model": str(tiny_clip), "default_multimodal_model": str(tiny_blip_caption)}
    probe = create_app(make_settings(tmp_path))
    if any(path.startswith("/v1/audio") for _, path in iter_routes(probe)):
        defaults["default_audio_model"] = str(request.getfixturevalue("tiny_whisper_path"))
    app = create_app(make_settings(tmp_path, max_loaded_models=8, memory_budget="none", **defaults))
    yield app
    from schemathesis.python import asgi

    asgi.shutdown_lifespans()  # the lifespan schemathesis started: unloads every model


@pytest.fixture
def api_schema(fuzz_app: Any) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)


@functools.cache
def media() -> dict[str, bytes]:
    """Valid inputs to swap into generated bodies, so requests also get past decoding into the models."""
    from PIL import Image

    from tests.fixtures.audio import make_audio

    out = {}
    for name, mode, colour in (("image", "RGB", (200, 40, 30)), ("mask", "RGBA", (0, 0, 0, 0))):
        buf = io.BytesIO()
        Image.new(mode, (32, 32), colour).save(buf, format="PNG")
        out[name] = buf.getvalue()
    out["file"] = make_audio(seconds=0.5)
    return out


def _real_media(body: Any) -> None:
    """Replace generated media strings (image, images, mask, file) with valid base64 media."""
    if not isinstance(body, dict):
        return
    for key in ("image", "images", "mask", "file"):
        if key in body:
            encoded = base64.b64encode(media()["mask" if key == "mask" else "file" if key == "file" else "image"])
            body[key] = [encoded.decode()] if isinstance(body[key], list) else encoded.decode()


def _clamp(case: Any) -> None:
    body = case.body
    if not isinstance(body, dict):
        return
    if case.path in ("/v1/chat/completions", "/v1/completions"):
        body.setdefault("max_tokens", CLAMP["max_tokens"])  # an untrained prompt would run to the context end
    for key, most in CLAMP.items():
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > most:
            body[key] = most
    size = body.get("size")
    if isinstance(size, str) and (m := SIZE.match(size)) and int(m.group(1)) * int(m.group(2)) > 128 * 128:
        body["size"] = "64x64"


def known_finding(case: Any) -> bool:
    """Inputs of bugs found by fuzzing and reported but not fixed yet, each pinned by an xfail test in FINDINGS;
    skipped here so random runs look for new ones. None at present (the tiny repetition_penalty is fixed)."""
    return False


def check(case: Any, real_media: bool = False) -> None:
    """One generated request: never a 5xx; an error is the envelope; 429/503 carry Retry-After."""
    _clamp(case)
    if known_finding(case):
        return
    if real_media:
        _real_media(case.body)
    started = time.monotonic()
    response = case.call(timeout=60)
    if time.monotonic() - started > 10:
        print(f"SLOW {time.monotonic() - started:.0f}s {case.method} {case.path} {json.dumps(case.body)[:2000]}")
    verify(response, f"{case.method} {case.path}", case.as_curl_command)


def verify(response: Any, label: str, repro: Any) -> None:
    """The fuzzing properties for one response."""
    status = response.status_code
    SEEN[label][status] += 1
    assert status < 500, f"{label} -> {status}: {response.text[:500]}\n{repro()}"
    if status >= 400:
        try:
            body = json.loads(response.content)
        except ValueError:
            body = None
        assert is_envelope(body), f"{label} -> {status} not the envelope: {response.text[:300]}"
        if status in (429, 503):
            assert response.headers.get("Retry-After")


def fuzz_operation(operation: Any, deadline: float) -> None:
    """Run generated valid and invalid requests of one operation through `check` (no shrinking: bounded)."""
    from schemathesis.generation.modes import GenerationMode

    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    @given(case=cases, real_media=st.booleans())
    @SETTINGS
    def fuzz(case: Any, real_media: bool) -> None:
        if time.monotonic() < deadline:  # past the budget the remaining examples are skipped
            check(case, real_media)

    fuzz()


UPLOADS = ("/v1/vision/classify/upload", "/v1/vision/clip/upload", "/v1/multimodal/caption/upload",
           "/v1/multimodal/vqa/upload", "/v1/images/edits", "/v1/images/variations", "/v1/audio/transcriptions",
           "/v1/audio/translations")
FIELDS = ("model", "prompt", "labels", "top_k", "question", "max_length", "n", "size", "response_format",
          "strength", "language", "temperature", "seed", "timestamp_granularities[]", "hypothesis_template")
VALUES = st.one_of(st.text(max_size=12), st.integers(-3, 40).map(str), st.floats(-1, 3).map(str),
                   st.sampled_from(["", "json", "text", "srt", "vtt", "verbose_json", "b64_json", "url", "64x64",
                                    "cat, dog", "word", "en", "{}"]))


@st.composite
def uploads(draw: Any) -> tuple[str, dict[str, str], dict[str, Any]]:
    """A multipart request as the OpenAI SDK and curl send them: a file part (valid, damaged or garbage media,
    or none) plus generated form fields, for every upload route."""
    path = draw(st.sampled_from(UPLOADS))
    fields = draw(st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=6))
    for key, most in CLAMP.items():
        if key in fields and fields[key].lstrip("-").isdigit() and int(fields[key]) > most:
            fields[key] = str(most)
    files: dict[str, Any] = {}
    if draw(st.booleans()):  # the right part with valid media, so the request can reach the model
        fields.pop("model", None)
        kind = "file" if "/audio/" in path else "image"
        files["image" if "/images/" in path else "file"] = ("upload", media()[kind], "application/octet-stream")
        if path.endswith("/edits"):
            files["mask"] = ("mask.png", media()["mask"], "image/png")
    for part in draw(st.lists(st.sampled_from(["file", "image", "mask"]), unique=True, max_size=2)):
        kind = draw(st.sampled_from(["image", "mask", "file", "garbage", "truncated", "empty"]))
        data = {"garbage": draw(st.binary(max_size=64)), "empty": b""}.get(kind)
        if data is None:
            data = media()[kind if kind != "truncated" else "image"]
            data = data[: len(data) // 2] if kind == "truncated" else data
        files[part] = (draw(st.sampled_from(["a.png", "a.wav", "x", "../../etc/passwd"])), data,
                       draw(st.sampled_from(["image/png", "audio/wav", "application/octet-stream"])))
    return path, fields, files


def test_fuzz_every_operation_no_5xx_envelope_errors_server_alive(api_schema: Any, fuzz_app: Any) -> None:
    """One lifespan for the whole run (the same server answers every operation), then a health check."""
    from schemathesis.python import asgi

    deadline = time.monotonic() + BUDGET_S
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 20
    operations = [op for op in operations if ONLY in op.path]
    failures = []
    for operation in operations:
        try:
            fuzz_operation(operation, deadline)
        except Exception as exc:  # noqa: BLE001 - gathered so one bad route does not hide the others
            failures.append(f"{operation.method.upper()} {operation.path}: {str(exc)[:1500]}")
    with asgi.get_client(fuzz_app) as client:

        @given(request=uploads())
        @settings(SETTINGS, max_examples=3 * EXAMPLES)
        def fuzz_uploads(request: tuple[str, dict[str, str], dict[str, Any]]) -> None:
            path, fields, files = request
            if time.monotonic() < deadline:
                response = client.post(path, data=fields, files=files or None, timeout=120)
                verify(response, f"POST {path} (multipart)", lambda: f"fields={fields} files={list(files)}")

        try:
            if any(ONLY in path for path in UPLOADS):
                fuzz_uploads()
        except Exception as exc:  # noqa: BLE001
            failures.append(f"multipart uploads: {str(exc)[:1500]}")
        health = client.get("/health", timeout=60)
        assert health.status_code == 200 and health.json()["status"] == "healthy"
        chat = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Say hello"}]},
                           timeout=60)
        assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"].startswith("Hello")
    print("\n".join(f"{op}: {dict(statuses)}" for op, statuses in sorted(SEEN.items())))
    assert sum(sum(c.values()) for c in SEEN.values()) >= len(operations)
    assert not failures, "\n\n".join(failures)


FINDINGS = [
    pytest.param("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "temperature": 1,
                                          "repetition_penalty": 5e-324, "max_tokens": 4},
                 id="tiny-repetition-penalty"),
]


@pytest.mark.parametrize(("path", "body"), FINDINGS)
def test_fuzz_findings_answer_4xx_or_200(fuzz_app: Any, path: str, body: dict[str, Any]) -> None:
    """Minimal reproductions of what fuzzing found: each must be served or refused with a 400, never a 500."""
    from schemathesis.python import asgi

    with asgi.get_client(fuzz_app) as client:
        response = client.post(path, json=body, timeout=60)
    assert response.status_code < 500, response.text[:300]
