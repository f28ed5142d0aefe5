"""Images: one small text-to-image generation through the server vs the same pipeline called directly.

A small Stable Diffusion pipeline built from a config (random weights; 128x128 output, 4 DDIM steps) is
saved under the run's temp dir and loaded by the server. Ours: `POST /v1/images/generations` with
`response_format: b64_json` (request parsing, worker thread, per-request pipeline copy and scheduler,
PNG encoding, base64, JSON). Baseline: the same pipeline loaded in this process and called with the same
prompt, steps, size and seed, returning PIL images (no encoding). Target: <= 1.2x.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from pathlib import Path
from typing import Any

from bench.harness import Harness
from bench.phase_overhead import burst

PHASE = "images"
PROMPT = "a red cat"
STEPS = 4
SIZE = 128


def build_model(folder: Path) -> Path:
    """The benchmark's pipeline: the tests' tiny SD family, 4x wider blocks, 16x16 latents."""
    from tests.fixtures.diffusion import build_text2img

    if not (folder / "model_index.json").exists():
        build_text2img(folder, seed=0, channels=32, latent=SIZE // 8)
    return folder


class DirectPipeline:
    """The baseline: StableDiffusionPipeline.from_pretrained and one call, as a library user writes it."""

    def __init__(self, folder: Path) -> None:
        from diffusers import StableDiffusionPipeline

        self.pipe = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None,
                                                            requires_safety_checker=False)
        self.pipe.set_progress_bar_config(disable=True)

    def generate(self, seed: int) -> Any:
        import torch

        generator = torch.Generator("cpu").manual_seed(seed)
        return self.pipe(PROMPT, num_inference_steps=STEPS, height=SIZE, width=SIZE, generator=generator).images


def warm_server_imports(srv: Any, folder: Path) -> threading.Thread:
    """Make the server import diffusers now, while this process builds the model (both take seconds).

    Loading a stub folder (a model_index.json and nothing else) imports the pipeline machinery, then fails.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    thread = threading.Thread(target=lambda: srv.client.post(  # a 500 is expected: no status check
        "/v1/models/load", timeout=300, json={"model": str(folder), "type": "diffusion"}))
    thread.start()
    return thread


def run(h: Harness) -> None:
    with h.server() as srv:
        if not srv.has_route("/v1/images/generations"):
            h.skip("small generation", "POST /v1/images/generations is not implemented yet")
            return
        started = time.perf_counter()
        warming = warm_server_imports(srv, h.tmp / "bench-sd-stub")
        folder = build_model(h.tmp / "bench-sd")
        h.log(f"model built in {time.perf_counter() - started:.1f}s")
        warming.join()
        srv.post("/v1/models/load", json={"model": str(folder), "type": "diffusion"}, timeout=300)
        h.log(f"server imports and load done at {time.perf_counter() - started:.1f}s")
        h.apply_threads()
        direct = DirectPipeline(folder)
        body = {"model": str(folder), "prompt": PROMPT, "num_inference_steps": STEPS, "size": f"{SIZE}x{SIZE}",
                "seed": 1, "response_format": "b64_json"}
        first = srv.post("/v1/images/generations", json=body, timeout=300)
        check_same_image(first.json(), direct.generate(1)[0])

        calls = 2 if h.quick else 3
        ours_s, base_s = h.interleave(
            lambda: burst(lambda: srv.post("/v1/images/generations", json=body, timeout=300), calls),
            lambda: burst(lambda: direct.generate(1), calls))
        added = (ours_s.median - base_s.median) * 1000
        h.result(f"small generation: {SIZE}x{SIZE}, {STEPS} steps (HTTP b64_json vs direct pipeline call)",
                 ours_s, base_s, target="<=1.2",
                 note=f"{added:+.0f} ms added per image (PNG + base64 + HTTP); same seed gives the same image; "
                      f"median of {calls} calls a round")


def check_same_image(body: dict[str, Any], expected: Any) -> None:
    """The server's image equals the direct call's (same pipeline, seed and scheduler)."""
    import numpy as np
    from PIL import Image

    got = Image.open(io.BytesIO(base64.b64decode(body["data"][0]["b64_json"]))).convert("RGB")
    diff = np.abs(np.asarray(got, dtype=int) - np.asarray(expected.convert("RGB"), dtype=int)).max()
    if diff > 2:
        raise AssertionError(f"server image differs from the direct call's (max pixel diff {diff})")
