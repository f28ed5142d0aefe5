"""The model config file: both formats, errors naming the line, CLI / env, aliases served over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.manager import ModelManager
from core.model_config import ModelConfigError, load_model_config, parse_model_config
from core.resolve import Resolver
from server import parse_args, settings_from_args
from tests.conftest import make_settings
from tests.fakes import FakeLoader

ROOT = Path(__file__).resolve().parents[1]
LLAMAFARM = ROOT / "tests" / "data" / "llamafarm.yaml"

PLAIN = """\
# aliases and per-model options
version: 1
models:
  my-llm:
    model: HuggingFaceTB/SmolLM2-135M-Instruct
    type: causal
    device: cpu
    dtype: bfloat16
    quantization: 8bit
    trust_remote_code: true
    pin: true
    preload: true
    max_batch_size: 8
  painter:
    model: ./weights/sd
    type: diffusion
    steps: 4
    guidance_scale: 0.5
    size: 512x768
    negative_prompt: blurry
    scheduler: Euler_A
    cpu_offload: sequential
    attention_slicing: true
    vae_tiling: true
    compile: reduce-overhead
  embedder:
    model: sentence-transformers/all-MiniLM-L6-v2
    type: encoder
  short: org/name
  Qwen/Qwen2.5-0.5B-Instruct:
    dtype: auto
"""


def test_plain_file_gives_aliases_with_their_options(tmp_path: Path) -> None:
    file = tmp_path / "models.yaml"
    file.write_text(PLAIN)
    aliases = load_model_config(file)
    assert list(aliases) == ["my-llm", "painter", "embedder", "short", "Qwen/Qwen2.5-0.5B-Instruct"]
    llm = aliases["my-llm"]
    assert (llm.model, llm.type, llm.device, llm.dtype, llm.quantization) == (
        "HuggingFaceTB/SmolLM2-135M-Instruct", "causal", "cpu", "bf16", "8bit")
    assert llm.trust_remote_code is True and llm.pin is True and llm.preload is True
    assert llm.extra == {"max_batch_size": 8}
    painter = aliases["painter"]
    assert painter.model == str(tmp_path / "weights" / "sd")  # relative to the config file, not the cwd
    assert painter.extra == {"steps": 4, "guidance_scale": 0.5, "size": "512x768", "negative_prompt": "blurry",
                             "scheduler": "euler_a", "cpu_offload": "sequential", "attention_slicing": True,
                             "vae_tiling": True, "compile": "reduce-overhead"}
    assert (aliases["embedder"].type, aliases["embedder"].extra) == ("encoder", {})
    assert aliases["short"].model == "org/name" and aliases["short"].extra == {}
    qwen = aliases["Qwen/Qwen2.5-0.5B-Instruct"]
    assert qwen.model == "Qwen/Qwen2.5-0.5B-Instruct" and qwen.dtype is None  # auto = the server's setting


def test_empty_file_means_no_aliases() -> None:
    assert parse_model_config("# nothing yet\n") == {}
    assert parse_model_config("models: {}\n") == {}


def test_llamafarm_yaml_universal_entries_become_aliases() -> None:
    aliases = load_model_config(LLAMAFARM)
    assert "fast" not in aliases and "gemma3:1b" not in aliases  # provider: ollama is not ours
    chat = aliases["chat"]
    assert (chat.model, chat.type, chat.device, chat.dtype, chat.pin) == (
        "HuggingFaceTB/SmolLM2-135M-Instruct", "causal", None, None, True)  # keep_loaded pins
    assert chat.trust_remote_code is False
    embedder = aliases["embedder"]
    assert (embedder.type, embedder.extra) == ("encoder", {})
    sd = aliases["sd-turbo"]
    assert (sd.model, sd.type, sd.dtype, sd.pin) == ("stabilityai/sd-turbo", "diffusion", "fp16", False)
    assert sd.extra == {"steps": 4, "guidance_scale": 0.0, "size": "512x512", "scheduler": "euler_a",
                        "attention_slicing": True}
    # LlamaFarm sends the model id itself: the entry's options apply to it too.
    assert aliases["stabilityai/sd-turbo"] == sd
    assert aliases["HuggingFaceTB/SmolLM2-135M-Instruct"].pin is True


def test_llamafarm_mapping_form_and_legacy_single_model() -> None:
    mapping = parse_model_config("runtime:\n  models:\n    writer:\n      provider: universal\n"
                                 "      model: org/writer\n      keep_loaded: true\n")
    assert mapping["writer"].model == "org/writer" and mapping["writer"].pin
    assert mapping["writer"].type is None  # no declared kind: the endpoint decides at request time
    legacy = parse_model_config("runtime:\n  provider: universal\n  model: org/legacy\n")
    assert list(legacy) == ["org/legacy"]
    assert parse_model_config("runtime:\n  provider: openai\n  model: gpt-4o\n") == {}


BAD = [
    ("models:\n  my-llm:\n    model: x\n    type: causal\n    dtype: fp8\n",
     "config error: models.my-llm.dtype (line 5): Input should be 'auto', 'fp32', 'fp16' or 'bf16'"),
    ("models:\n  my-llm:\n    model: x\n\n    stepz: 4\n",
     "config error: models.my-llm.stepz (line 5): unknown key 'stepz'; did you mean 'steps'?"),
    ("models:\n  a:\n    model: x\n    steps: 0\n",
     "config error: models.a.steps (line 4): Input should be greater than or equal to 1"),
    ("models:\n  a:\n    size: 500x500\n",
     "config error: models.a.size (line 3): width and height must be multiples of 8 between 64 and 2048"),
    ("models:\n  a:\n    type: toaster\n",
     "config error: models.a.type (line 3): Input should be 'causal', 'encoder', 'diffusion', 'vision', 'audio', "
     "'multimodal' or 'speech'"),
    ("models:\n  a: x\n  b: y\n  a: z\n", "config error: models.a (line 4): duplicate key 'a'"),
    ("modles:\n  a: x\n", "config error: modles (line 1): unknown key 'modles'; did you mean 'models'?"),
    ("models:\n  a: [x\n", "config error: invalid YAML (line 3, column 1): expected ',' or ']', but got "
     "'<stream end>'"),
    ("- a\n- b\n", "config error: top level (line 1): expected a mapping with 'models:' (or a llamafarm.yaml "
     "with 'runtime:')"),
    ("runtime:\n  models:\n    - name: chat\n      provider: universal\n      transformers:\n        dtype: fp16\n",
     "config error: runtime.models.0 (line 3): missing required key 'model'"),
    ("runtime:\n  models:\n    - name: sd\n      provider: universal\n      model: x\n      diffusion:\n"
     "        default_steps: 4\n        default_stepz: 5\n",
     "config error: runtime.models.0.diffusion.default_stepz (line 8): unknown key 'default_stepz'; did you mean "
     "'default_steps'?"),
    ("runtime:\n  models:\n    - name: a\n      provider: universal\n      model: x\n      transformers:\n"
     "        model_type: toaster\n",
     "config error: runtime.models.0.transformers.model_type (line 7): unknown model_type 'toaster'; use text, "
     "embedding, image, vision, audio or multimodal"),
    ("runtime:\n  models:\n    - {name: a, provider: universal, model: x}\n    - {name: a, provider: universal, "
     "model: y}\n", "config error: runtime.models.1.name (line 4): duplicate model name 'a'"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m.split(":")[1].split("(")[0].strip() for _, m in BAD])
def test_bad_file_names_the_key_and_line(text: str, message: str) -> None:
    with pytest.raises(ModelConfigError) as caught:
        parse_model_config(text)
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match=r"^config error: cannot read .*nope\.yaml: No such file"):
        load_model_config(tmp_path / "nope.yaml")


def test_config_flag_and_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "models.yaml"
    assert settings_from_args(parse_args(["--config", str(file)])).config == file
    monkeypatch.setenv("UNIVERSAL_RUNTIME_CONFIG", str(file))
    assert settings_from_args(parse_args([])).config == file
    other = tmp_path / "other.yaml"
    assert settings_from_args(parse_args(["--config", str(other)])).config == other  # the flag wins


@pytest.mark.parametrize("how", ["flag", "env"])
def test_bad_config_stops_the_server_at_start_with_one_line(tmp_path: Path, how: str) -> None:
    file = tmp_path / "models.yaml"
    file.write_text("models:\n  my-llm:\n    model: x\n    dtype: fp8\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNIVERSAL_RUNTIME_")}
    args = [sys.executable, str(ROOT / "server.py"), "--port", "1"]
    if how == "flag":
        args += ["--config", str(file)]
    else:
        env["UNIVERSAL_RUNTIME_CONFIG"] = str(file)
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "config error: models.my-llm.dtype (line 4): Input should be 'auto', 'fp32', 'fp16' or 'bf16'")


# ----- aliases over HTTP ----------------------------------------------------------------------------


@pytest.fixture
def local_llm(tmp_path: Path) -> Path:
    """A folder that resolves locally and whose config.json says 'causal LM' (weights are never read)."""
    folder = tmp_path / "tiny-llm"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    (folder / "model.safetensors").write_bytes(b"\0" * 4096)
    return folder


def _manager(tmp_path: Path, config: Path, loader: FakeLoader) -> ModelManager:
    settings = make_settings(tmp_path, config=config)
    return ModelManager(settings, Resolver(settings, load_model_config(config)), loader=loader)


def test_create_app_reads_the_config_and_lists_aliases(tmp_path: Path, client_factory) -> None:  # noqa: ANN001
    client: TestClient = client_factory(config=LLAMAFARM)
    items = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert items["chat"] == {**items["chat"], "type": "causal", "status": "available", "pinned": True,
                             "memory_bytes": None}
    assert items["sd-turbo"]["type"] == "diffusion" and items["embedder"]["type"] == "encoder"
    assert "fast" not in items
    assert client.get("/v1/models/sd-turbo").json()["status"] == "available"


def test_alias_loads_with_its_options(tmp_path: Path, local_llm: Path, client_factory) -> None:  # noqa: ANN001
    config = tmp_path / "models.yaml"
    config.write_text("models:\n  my-llm:\n    model: ./tiny-llm\n    dtype: bf16\n    trust_remote_code: true\n"
                      "    pin: true\n    max_batch_size: 4\n")
    loader = FakeLoader()
    manager = _manager(tmp_path, config, loader)
    client: TestClient = client_factory(manager=manager)
    listed = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert listed["my-llm"]["status"] == "available" and listed["my-llm"]["pinned"] is True

    loaded = client.post("/v1/models/load", json={"model": "my-llm"})  # no type: read from config.json
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["type"] == "causal" and loaded.json()["status"] == "loaded"
    assert loaded.json()["pinned"] is True
    assert loader.loads == {str(local_llm.resolve()): 1}
    (entry,) = manager.entries()
    ctx = entry.model.ctx
    assert (ctx.dtype, ctx.trust_remote_code) == ("bf16", True)
    assert ctx.options["max_batch_size"] == 4
    listed = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert listed["my-llm"]["status"] == "loaded"
    assert client.get("/v1/models/my-llm").json()["status"] == "loaded"


def test_llamafarm_options_apply_to_the_model_id_too(tmp_path: Path, local_llm: Path,
                                                     client_factory) -> None:  # noqa: ANN001
    config = tmp_path / "llamafarm.yaml"
    config.write_text(f"version: v1\nname: p\nnamespace: default\nruntime:\n  models:\n    - name: chat\n"
                      f"      provider: universal\n      model: {local_llm}\n      keep_loaded: true\n"
                      "      transformers:\n        dtype: bfloat16\n        model_type: text\n")
    manager = _manager(tmp_path, config, FakeLoader())
    client: TestClient = client_factory(manager=manager)
    loaded = client.post("/v1/models/load", json={"model": str(local_llm)})
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["pinned"] is True
    assert manager.entries()[0].model.ctx.dtype == "bf16"


def test_preload_alias_without_a_type_loads_at_start(tmp_path: Path, local_llm: Path,
                                                     client_factory) -> None:  # noqa: ANN001
    config = tmp_path / "models.yaml"
    config.write_text(f"models:\n  warm:\n    model: {local_llm}\n    preload: true\n")
    loader = FakeLoader()
    client: TestClient = client_factory(manager=_manager(tmp_path, config, loader))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not loader.loads:
        time.sleep(0.02)
    assert loader.loads == {str(local_llm.resolve()): 1}
    deadline = time.monotonic() + 5
    while client.get("/v1/models/warm").json()["status"] != "loaded" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert client.get("/v1/models/warm").json()["type"] == "causal"


def test_diffusion_defaults_from_the_config_reach_the_real_pipeline(tmp_path: Path, tiny_sd: Path,
                                                                     client_factory) -> None:  # noqa: ANN001
    """An alias's `size` / `steps` become the defaults of a real (tiny) Stable Diffusion pipeline."""
    import base64
    import io

    from PIL import Image

    config = tmp_path / "models.yaml"
    config.write_text(f"models:\n  painter:\n    model: {tiny_sd}\n    size: 128x64\n    steps: 1\n"
                      "    scheduler: ddim\n")
    client: TestClient = client_factory(config=config)
    response = client.post("/v1/images/generations", json={"model": "painter", "prompt": "a red square",
                                                           "response_format": "b64_json", "seed": 1})
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"])))
    assert image.size == (128, 64)  # the pipeline's native size is 64x64
    assert client.get("/v1/models/painter").json()["status"] == "loaded"


def test_the_documented_examples_parse() -> None:
    import re

    doc = (ROOT / "docs" / "configuration.md").read_text()
    plain, llamafarm = re.findall(r"```yaml\n(.*?)```", doc, re.S)[:2]
    assert {"my-llm", "painter", "embedder", "Qwen/Qwen2.5-0.5B-Instruct"} <= set(parse_model_config(plain))
    assert {"chat", "sd-turbo"} <= set(parse_model_config(llamafarm))
    broken = plain.replace("dtype: bf16\n    pin", "dtype: bf17\n    pin")
    with pytest.raises(ModelConfigError) as caught:
        parse_model_config(broken)
    assert f"`{caught.value}`" in doc or str(caught.value) in doc
