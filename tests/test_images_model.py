"""The diffusion model class, the image store and the cancellation path, below and around HTTP."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from core.contract import LoadContext
from core.errors import InvalidRequest, UnsupportedModelType
from core.images_store import ImageStore
from core.resolve import ModelSpec
from models.diffusion.model import (
    EDIT,
    GENERATE,
    INPAINT,
    TEXT2IMG,
    VARIATION,
    DiffusionModel,
    GenerationCancelled,
    ImageJob,
    load,
    min_one_step,
    pipeline_kind,
)
from routers.images import input_size, run_cancellable, wanted_image_type


def load_tiny(path: Path, **options: Any) -> DiffusionModel:
    return load(ModelSpec(requested=str(path), key=str(path), category="diffusion", path=path),
                LoadContext(options=options))


@pytest.fixture(scope="module")
def sd(tiny_sd: Path) -> DiffusionModel:
    return load_tiny(tiny_sd)


def test_kind_comes_from_model_index_and_unet_channels(tiny_sd: Path, tiny_sd_inpaint: Path, tmp_path: Path) -> None:
    assert pipeline_kind(tiny_sd) == ("StableDiffusionPipeline", TEXT2IMG)
    assert pipeline_kind(tiny_sd_inpaint) == ("StableDiffusionInpaintPipeline", INPAINT)
    # an inpainting checkpoint that calls itself StableDiffusionPipeline is still told apart by in_channels
    (tmp_path / "unet").mkdir()
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (tmp_path / "unet" / "config.json").write_text('{"in_channels": 9}')
    assert pipeline_kind(tmp_path)[1] == INPAINT
    # and a 4-channel model saved as an inpainting pipeline can still generate
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionInpaintPipeline"}')
    (tmp_path / "unet" / "config.json").write_text('{"in_channels": 4}')
    assert pipeline_kind(tmp_path)[1] == TEXT2IMG
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(UnsupportedModelType):
        pipeline_kind(tmp_path)


def test_text2img_model_shares_weights_with_its_siblings(sd: DiffusionModel) -> None:
    assert sd.capabilities == {GENERATE, VARIATION, EDIT}
    gen, var, edit = sd.pipes[GENERATE], sd.pipes[VARIATION], sd.pipes[EDIT]
    assert type(var).__name__ == "StableDiffusionImg2ImgPipeline"
    assert type(edit).__name__ == "StableDiffusionInpaintPipeline"
    assert gen.unet is var.unet is edit.unet and gen.vae is edit.vae  # from_pipe: loaded once
    assert sd.describe() == {"pipeline": "StableDiffusionPipeline", "kind": TEXT2IMG, "native_size": "64x64",
                             "capabilities": ["edit", "generate", "variation"]}
    assert sd.memory_bytes() > 100_000
    assert getattr(gen, "safety_checker", None) is None


def test_inpainting_model_capabilities(tiny_sd_inpaint: Path) -> None:
    model = load_tiny(tiny_sd_inpaint)
    assert model.capabilities == {EDIT, VARIATION} and model.kind == INPAINT
    result = model.variation(ImageJob(prompt="", image=Image.new("RGB", (64, 64), "red"), steps=2, seed=0))
    assert result.images[0].size == (64, 64)


def test_per_model_defaults_from_options(tiny_sd: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="universal_runtime.diffusion")
    model = load_tiny(tiny_sd, size="128x64", num_inference_steps=3, scheduler="euler_a", guidance_scale=2.0,
                      cpu_offload=True, attention_slicing=True)
    assert (model.defaults.width, model.defaults.height, model.defaults.steps) == (128, 64, 3)
    result = model.generate(ImageJob(prompt="a cat", seed=1))
    assert result.images[0].size == (128, 64)
    messages = [r.getMessage() for r in caplog.records]
    assert any("EulerAncestralDiscreteScheduler" in m and "3 steps" in m for m in messages)
    assert any("cpu_offload needs a CUDA device" in m for m in caplog.messages)
    with pytest.raises(ValueError, match="unknown scheduler"):
        load_tiny(tiny_sd, scheduler="nope")


def test_seeds_are_per_image_and_reported(sd: DiffusionModel) -> None:
    result = sd.generate(ImageJob(prompt="a cat", n=2, seed=100, steps=1))
    assert result.seeds == [100, 101]
    assert len(sd.generate(ImageJob(prompt="a cat", steps=1)).seeds) == 1


def test_incompatible_scheduler_is_invalid_request(sd: DiffusionModel) -> None:
    with pytest.raises(InvalidRequest) as info:
        sd.generate(ImageJob(prompt="a cat", steps=1, scheduler="flow_euler"))
    assert info.value.param == "scheduler"


def test_min_one_step() -> None:
    assert min_one_step(0.75, 4) == 0.75
    for steps in (1, 3, 7, 49, 150):
        assert int(steps * min_one_step(0.0, steps)) == 1
    assert min_one_step(1.5, 10) == 1.0


def test_input_size_rounding_and_bounds() -> None:
    assert input_size(101, 75) == (96, 72)
    assert input_size(4000, 3000) == (2048, 1536)
    assert input_size(50, 30) == (104, 64)


def test_accept_parsing() -> None:
    assert wanted_image_type("") is None and wanted_image_type("*/*") is None
    assert wanted_image_type("image/jpeg;q=0.4, image/webp;q=0.9") == "image/webp"
    assert wanted_image_type("IMAGE/PNG") == "image/png"
    assert wanted_image_type("image/png, application/json;q=0.1") is None
    assert wanted_image_type("image/gif") is None


def test_store_names_and_lookup(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "new" / "dir")
    name = store.save(Image.new("RGB", (8, 8), "blue"))
    assert len(name) == 36 and name.endswith(".png") and int(name[:32], 16) >= 0
    assert store.path_for(name) == tmp_path / "new" / "dir" / name
    assert Image.open(store.path_for(name)).size == (8, 8)  # type: ignore[arg-type]
    assert list((tmp_path / "new" / "dir").iterdir()) == [tmp_path / "new" / "dir" / name]  # no temp left
    for bad in ("../" + name, name.upper(), name + "/", "", "x" * 32 + ".png", name[:-4]):
        assert store.path_for(bad) is None


# ----- cancellation --------------------------------------------------------------------------------
def test_cancel_event_stops_at_a_step_boundary(sd: DiffusionModel, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="universal_runtime.diffusion")
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    started = time.perf_counter()
    with pytest.raises(GenerationCancelled):
        sd.generate(ImageJob(prompt="a cat", steps=150, seed=0), cancel)
    assert time.perf_counter() - started < 3.0
    steps = [m for m in caplog.messages if ": step " in m]
    assert steps and not any(m.endswith("step 150/150") for m in steps)
    with pytest.raises(GenerationCancelled):  # already cancelled: nothing runs
        sd.generate(ImageJob(prompt="a cat", steps=2), cancel)


class GoneRequest:
    """A request whose client disconnects after `after` polls."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.polls = 0

    async def is_disconnected(self) -> bool:
        self.polls += 1
        return self.polls > self.after


def test_run_cancellable_stops_the_model_when_the_client_leaves(sd: DiffusionModel) -> None:
    async def go() -> tuple[Any, float]:
        started = time.perf_counter()
        result = await run_cancellable(GoneRequest(1), sd.run, sd.generate,  # type: ignore[arg-type]
                                       ImageJob(prompt="a cat", steps=150))
        return result, time.perf_counter() - started

    result, elapsed = asyncio.run(go())
    assert result is None and elapsed < 3.0
    done = asyncio.run(run_cancellable(GoneRequest(10**6), sd.run, sd.generate,  # type: ignore[arg-type]
                                       ImageJob(prompt="a cat", steps=1)))
    assert done is not None and len(done.images) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_real_disconnect_stops_generation(tmp_path: Path, tiny_sd: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Through uvicorn: the client times out mid-generation; the server stops within a few steps."""
    import httpx
    import uvicorn

    from server import create_app
    from tests.conftest import make_settings

    caplog.set_level("INFO", logger="universal_runtime")
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(make_settings(tmp_path)), host="127.0.0.1", port=port,
                                           log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        body = {"model": str(tiny_sd), "prompt": "a cat", "num_inference_steps": 1}
        assert httpx.post(f"{url}/v1/images/generations", json=body, timeout=120).status_code == 200  # warm
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"{url}/v1/images/generations", json={**body, "num_inference_steps": 150},
                       headers={"x-request-id": "gone-1"}, timeout=0.5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any("gone-1: client disconnected" in m for m in caplog.messages):
            time.sleep(0.05)
        assert any(m == "request gone-1: client disconnected; generation stopped" for m in caplog.messages)
        assert not any(m == "request gone-1: step 150/150" for m in caplog.messages)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# ----- device care (fakes: no accelerator on the test machines) ------------------------------------
class FakeUnet:
    def __init__(self) -> None:
        self.compiled: list[Any] = []

    def compile(self, mode: Any = None) -> None:
        self.compiled.append(mode)


class FakePipe:
    """Records the placement calls `place` makes."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.unet = FakeUnet()

    def to(self, device: str) -> None:
        self.calls.append(("to", device))

    def enable_model_cpu_offload(self, device: str) -> None:
        self.calls.append(("model_offload", device))
        self._all_hooks = ["hook"]

    def enable_sequential_cpu_offload(self, device: str) -> None:
        self.calls.append(("sequential_offload", device))

    def enable_attention_slicing(self) -> None:
        self.calls.append(("attention_slicing", None))

    def enable_vae_tiling(self) -> None:
        self.calls.append(("vae_tiling", None))

    def set_progress_bar_config(self, **kw: Any) -> None:
        self.calls.append(("progress", kw))


@pytest.mark.parametrize("device,options,expected,compiled", [
    ("cuda", {}, [("to", "cuda")], []),
    ("cuda", {"cpu_offload": True}, [("model_offload", "cuda")], []),
    ("cuda:1", {"cpu_offload": "sequential"}, [("sequential_offload", "cuda:1")], []),
    ("cpu", {"cpu_offload": True}, [("to", "cpu")], []),
    ("mps", {}, [("to", "mps"), ("attention_slicing", None)], []),
    ("cuda", {"compile": True, "vae_tiling": "yes"}, [("to", "cuda"), ("vae_tiling", None)], [None]),
    ("cuda", {"compile": "max-autotune", "attention_slicing": True},
     [("to", "cuda"), ("attention_slicing", None)], ["max-autotune"]),
])
def test_placement_follows_device_and_options(device: str, options: dict[str, Any],
                                              expected: list[tuple[str, Any]], compiled: list[Any]) -> None:
    from models.diffusion.loading import place

    base, sibling = FakePipe(), FakePipe()
    place({GENERATE: base, EDIT: sibling}, LoadContext(device=device, options=options))
    assert [c for c in base.calls if c[0] != "progress"] == expected
    assert base.unet.compiled == compiled
    assert ("progress", {"disable": True}) in sibling.calls
    if ("model_offload", "cuda") in expected:  # siblings share the offload hooks so they re-offload after a call
        assert sibling._all_hooks == ["hook"]


def test_fp16_load_arguments(tiny_sd: Path, tmp_path: Path) -> None:
    import torch

    from models.diffusion.loading import from_pretrained_kwargs

    kwargs = from_pretrained_kwargs(tiny_sd, LoadContext(device="cuda", dtype="fp16"))
    assert torch.float16 in kwargs.values() and "variant" not in kwargs
    assert kwargs["safety_checker"] is None and kwargs["requires_safety_checker"] is False
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionXLPipeline"}')
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"")
    kwargs = from_pretrained_kwargs(tmp_path, LoadContext(device="cuda", dtype="fp16"))
    assert kwargs["variant"] == "fp16" and "safety_checker" not in kwargs


def test_siblings_never_recast_shared_modules(tiny_sd: Path) -> None:
    """A module kept in float32 inside a bf16 pipeline stays float32 when edit/variation pipelines are built."""
    import torch
    from diffusers import StableDiffusionPipeline

    from models.diffusion.loading import derive

    base = StableDiffusionPipeline.from_pretrained(str(tiny_sd), dtype=torch.bfloat16)
    base.text_encoder.final_layer_norm.to(torch.float32)
    for task in (VARIATION, EDIT):
        sibling = derive(base, task, "StableDiffusionPipeline")
        assert sibling is not None and sibling.unet is base.unet
    assert base.text_encoder.final_layer_norm.weight.dtype == torch.float32
    assert base.unet.dtype == torch.bfloat16
