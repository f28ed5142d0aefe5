"""Every curl example (and every OpenAI SDK snippet) of README.md and docs/*.md, run against a live
`python server.py`, so the docs cannot rot.

The pages are read as they are: README.md first, then docs/*.md in name order. Every command that starts with
`curl` in a ```bash block is extracted (with `\\` continuations and quoted multi-line bodies, and the block's
`NAME=...` assignments run before it), and run in that order. An example's id names its page and the `##`
section it is in (`chat-examples:/v1/completions`, `readme-first-requests:/health`):

- `http://127.0.0.1:11540` becomes the test server; `curl` gets `-sS --fail-with-body`, so an HTTP error fails
  the example with the server's message;
- the hub ids and placeholder folders of the examples become tiny real models of the test fixtures
  (`SUBSTITUTES`); `default` chat stays the packaged SmolLM2 and embeddings the packaged all-MiniLM-L6-v2;
- the media files the examples name (`@photo.png`, `$(base64 -w0 speech.wav)`, ...) are created in the
  commands' working directory.

Each example must exit 0 and print its documented kind of answer: JSON without an error, an SSE stream ending in
`[DONE]`, a subtitle / text body, or the file given to `-o`. The ```python blocks that build an `OpenAI` client on
the documented URL run as scripts, with the same substitutions, and must exit 0.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

DOC_URL = "http://127.0.0.1:11540"
MEDIA = re.compile(r"[\w.-]+\.(?:png|jpe?g|webp|wav|mp3|flac|ogg)\b")
ASSIGNMENT = re.compile(r"^[A-Za-z_]\w*=")


@dataclass
class Example:
    """One curl command of a page, with the assignments of its block that precede it."""

    section: str
    command: str
    prelude: list[str]

    @property
    def id(self) -> str:
        route = re.search(r"11540(/[\w/.-]*)", self.command)
        return f"{self.section}:{route.group(1) if route else '?'}"


def _complete(text: str) -> bool:
    if text.rstrip().endswith("\\"):
        return False
    try:
        shlex.split(text)
    except ValueError:  # an open quote: the command goes on on the next line
        return False
    return True


def _section(page: str, heading: str) -> str:
    """An example's section id: the page, then the first words of its `##` heading."""
    return "-".join([page, *re.findall(r"\w+", heading.lower())[:3]])


def extract(markdown: str, page: str = "") -> list[Example]:
    """The curl commands of every ```bash block, in document order."""
    examples: list[Example] = []
    section = page or "readme"
    for heading, block in re.findall(r"^(## [^\n]*)$|^```bash\n(.*?)^```", markdown, re.M | re.S):
        if heading:
            section = _section(page, heading[3:]).strip("-")
            continue
        prelude: list[str] = []
        pending = ""
        for line in block.splitlines():
            if not pending:
                if ASSIGNMENT.match(line):
                    prelude.append(line)
                if not line.startswith("curl "):
                    continue
            pending += line + "\n"
            if _complete(pending):
                examples.append(Example(section, pending.strip(), list(prelude)))
                pending = ""
        assert not pending, f"unterminated command in a bash block: {pending}"
    return examples


def extract_python(markdown: str, page: str = "") -> list[Example]:
    """The ```python blocks that talk to the runtime at the documented URL."""
    examples: list[Example] = []
    section = page or "readme"
    for heading, block in re.findall(r"^(## [^\n]*)$|^```python\n(.*?)^```", markdown, re.M | re.S):
        if heading:
            section = _section(page, heading[3:]).strip("-")
        elif DOC_URL in block:
            examples.append(Example(section, block, []))
    return examples


ROOT = Path(__file__).resolve().parents[1]


def pages() -> list[Path]:
    """The pages whose examples run: README.md, then docs/*.md by name."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _page_name(path: Path) -> str:
    return "readme" if path.name == "README.md" else path.stem


EXAMPLES = [e for p in pages() for e in extract(p.read_text(), _page_name(p))]
PYTHON_EXAMPLES = [e for p in pages() for e in extract_python(p.read_text(), _page_name(p))]


# ----- the server and its models ---------------------------------------------------------------------------
@dataclass
class Live:
    url: str
    cwd: Path
    substitutes: dict[str, str]


def _png(path: Path, mode: str) -> None:
    from PIL import Image

    rng = np.random.default_rng(len(path.name))
    if mode == "L":  # a mask: white (repaint) on the right half
        arr = np.zeros((64, 64), dtype=np.uint8)
        arr[:, 32:] = 255
        Image.fromarray(arr, "L").save(path)
        return
    arr = rng.integers(0, 255, (64, 64, 4), dtype=np.uint8)
    arr[..., 3] = 255
    arr[:, :32, 3] = 0  # a transparent half: what an edit without a mask repaints
    image = Image.fromarray(arr, "RGBA")
    (image if path.suffix == ".png" else image.convert("RGB")).save(path)


def make_media(cwd: Path, names: set[str]) -> None:
    """The files the examples read, by extension: 64x64 images (RGBA PNGs with a transparent half, `mask*`
    grayscale), 2-second tones in the named audio format."""
    from tests.fixtures.audio import make_audio

    audio = {".wav": ("WAV", None), ".mp3": ("MP3", "MPEG_LAYER_III"), ".flac": ("FLAC", None),
             ".ogg": ("OGG", "VORBIS")}
    for name in names:
        path = cwd / name
        if path.suffix in audio:
            fmt, subtype = audio[path.suffix]
            path.write_bytes(make_audio(2.0, rate=16000, fmt=fmt, subtype=subtype))
        else:
            _png(path, "L" if name.startswith("mask") else "RGBA")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Live]:
    """`python server.py` on a free port: the default image/vision/CLIP/audio/multimodal models are tiny
    fixture folders, a config file defines the aliases of the config section."""
    from tests.hardening import server_process

    fx = {name: str(request.getfixturevalue(name)) for name in (
        "tiny_sd", "tiny_sd_inpaint", "tiny_vit", "tiny_clip", "tiny_whisper_path", "tiny_blip_caption",
        "tiny_blip_vqa", "tiny_st_folder", "tiny_classifier_folder", "tiny_cross_encoder_folder",
        "tiny_vits_path", "tiny_speecht5_path")}
    lm = request.getfixturevalue("tiny_lm")
    smollm2_gguf = str(request.getfixturevalue("smollm2_path"))
    substitutes = {
        "stabilityai/sd-turbo": fx["tiny_sd"], "/models/sd15": fx["tiny_sd"],
        "/models/sd-inpainting": fx["tiny_sd_inpaint"],
        "google/vit-base-patch16-224": fx["tiny_vit"], "/models/my-vit": fx["tiny_vit"],
        "openai/clip-vit-base-patch32": fx["tiny_clip"],
        "openai/whisper-tiny": fx["tiny_whisper_path"], "/models/whisper-small": fx["tiny_whisper_path"],
        "Salesforce/blip-image-captioning-base": fx["tiny_blip_caption"], "/models/my-blip": fx["tiny_blip_caption"],
        "Salesforce/blip-vqa-base": fx["tiny_blip_vqa"],
        "/models/bge-small-en-v1.5": fx["tiny_st_folder"],
        "distilbert/distilbert-base-uncased-finetuned-sst-2-english": fx["tiny_classifier_folder"],
        "cross-encoder/ms-marco-MiniLM-L6-v2": fx["tiny_cross_encoder_folder"],
        "facebook/mms-tts-eng": fx["tiny_vits_path"], "/models/speecht5-with-voices": fx["tiny_speecht5_path"],
        '"voice": "slt"': '"voice": "alice"',  # the tiny SpeechT5's voices are alice and bob
        "/models/my-llama": str(lm.path), "/models/qwen2.5-0.5b-instruct-q4_k_m.gguf": smollm2_gguf,
    }
    tmp = tmp_path_factory.mktemp("readme-examples")
    cwd = tmp / "cwd"
    cwd.mkdir()
    config = tmp / "models.yaml"
    config.write_text(f"models:\n  my-llm:\n    model: {lm.path}\n    type: causal\n"
                      f"  painter:\n    model: {fx['tiny_sd']}\n    type: diffusion\n")
    settings = {
        "default_image_model": fx["tiny_sd"], "default_vision_model": fx["tiny_vit"],
        "default_clip_model": fx["tiny_clip"], "default_audio_model": fx["tiny_whisper_path"],
        "default_multimodal_model": fx["tiny_blip_caption"], "config": config, "media_dirs": cwd,
        "output_dir": tmp / "outputs", "max_loaded_models": 32, "idle_ttl_seconds": 0,
    }
    with server_process(tmp / "logs", health_timeout=60, **settings) as server:
        yield Live(server.url, cwd, substitutes)


def prepared(example: Example, live: Live) -> str:
    """The bash script of one example, pointed at the test server and its tiny models."""
    script = "\n".join([*example.prelude, example.command])
    script = script.replace(DOC_URL, live.url)
    for doc_id in sorted(live.substitutes, key=len, reverse=True):
        script = script.replace(doc_id, live.substitutes[doc_id])
    return re.sub(r"(^|\n)curl ", r"\1curl -sS --fail-with-body --max-time 120 ", script)


def check_output(example: Example, out: str, cwd: Path) -> None:
    """The answer has the kind the example documents."""
    command = example.command
    saved = re.search(r"-o\s+(\S+)", command)
    if saved:
        assert (cwd / saved.group(1)).stat().st_size > 0
        return
    if '"stream_format": "sse"' in command:
        assert '"speech.audio.done"' in out and '"error"' not in out, out[-2000:]
        return
    if re.search(r'"stream":\s*true', command):
        assert out.rstrip().endswith("data: [DONE]") and '"error"' not in out, out[-2000:]
        return
    text_format = re.search(r"response_format[=\"': ]+(text|srt|vtt)\b", command)
    if text_format:
        assert out.strip() and not out.lstrip().startswith("{"), out[:2000]
        if text_format.group(1) == "srt":
            assert re.match(r"1\n\d\d:\d\d:\d\d,\d{3} --> ", out), out[:2000]
        return
    body: Any = json.loads(out)
    assert not (isinstance(body, dict) and body.get("error")), out[:2000]  # a response object has "error": null


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES, ids=[e.id for e in EXAMPLES])
def test_readme_example(example: Example, live: Live) -> None:
    make_media(live.cwd, set(MEDIA.findall("\n".join([*example.prelude, example.command]))))
    script = prepared(example, live)
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=live.cwd, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, f"exit {done.returncode}\n$ {script}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    check_output(example, done.stdout, live.cwd)


@pytest.mark.slow
@pytest.mark.parametrize("example", PYTHON_EXAMPLES, ids=[f"python-{e.section}" for e in PYTHON_EXAMPLES])
def test_readme_python_example(example: Example, live: Live) -> None:
    make_media(live.cwd, set(MEDIA.findall(example.command)))
    script = example.command.replace(DOC_URL, live.url)
    for doc_id in sorted(live.substitutes, key=len, reverse=True):
        script = script.replace(doc_id, live.substitutes[doc_id])
    done = subprocess.run([sys.executable, "-c", script], cwd=live.cwd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"exit {done.returncode}\n{script}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def test_every_section_with_endpoints_has_examples() -> None:
    """The extraction itself works: the examples cover every endpoint family the docs document, and every
    endpoint page has examples."""
    routes = {re.search(r"11540(/v1/\w+|/health)", e.command).group(1) for e in EXAMPLES  # type: ignore[union-attr]
              if re.search(r"11540(/v1/\w+|/health)", e.command)}
    assert {"/v1/chat", "/v1/completions", "/v1/embeddings", "/v1/images", "/v1/vision", "/v1/multimodal",
            "/v1/audio", "/v1/models", "/health"} <= routes, routes
    assert all(e.command.startswith("curl ") for e in EXAMPLES)
    pages_with_examples = {e.section.split("-")[0] for e in EXAMPLES}
    assert {"readme", "chat", "encoders", "images", "vision", "multimodal", "audio", "configuration",
            "operations"} <= pages_with_examples, pages_with_examples


def test_extract_handles_continuations_open_quotes_and_assignments() -> None:
    markdown = ("## A\n```bash\nIMG=$(base64 -w0 a.png)   # note\nbash start.sh\n"
                "curl -s http://127.0.0.1:11540/x \\\n  -d '{\n  \"a\": 1\n}'\n# comment\n"
                "curl -s http://127.0.0.1:11540/y\n```\n```python\ncurl = 1\n```\n")
    first, second = extract(markdown)
    assert first.command == "curl -s http://127.0.0.1:11540/x \\\n  -d '{\n  \"a\": 1\n}'"
    assert first.prelude == ["IMG=$(base64 -w0 a.png)   # note"] and first.section == "a"
    assert second.command == "curl -s http://127.0.0.1:11540/y" and second.id == "a:/y"
    assert [e.id for e in extract(markdown, "chat")] == ["chat-a:/x", "chat-a:/y"]
