"""Vision: one-image classification (ViT) and CLIP zero-shot through the server vs the direct library call.

Models: a small ViT classifier and a small CLIP (hidden 192, 6 layers, 224-px images, random weights;
tests/fixtures/vision.py builders). Ours: `POST /v1/vision/classify` / `/v1/vision/clip` with a base64 JPEG on
a keep-alive connection (body parsing, image decode, micro-batcher, worker thread, JSON). Baseline: the same
work in this process: decode the JPEG, run the image processor (and tokenizer), forward, softmax.
Each round is the median of a burst of calls. Target: <= 1.2x.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

from bench.harness import Harness
from bench.phase_overhead import burst

PHASE = "vision"
SIZE = {"hidden": 192, "layers": 6, "image_size": 224, "patch": 16}
LABELS = ["a cat", "a dog", "a car", "a tree"]


def jpeg(width: int = 320, height: int = 240) -> bytes:
    """A photo-sized JPEG with some texture."""
    from PIL import Image

    img = Image.effect_noise((width, height), 40).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


class DirectVision:
    """The server's work done directly: PIL decode, processor, forward, softmax."""

    def __init__(self, folder: Path, clip: bool) -> None:
        from transformers import (
            AutoImageProcessor,
            AutoModelForImageClassification,
            AutoModelForZeroShotImageClassification,
            AutoProcessor,
        )

        self.clip = clip
        if clip:
            self.processor = AutoProcessor.from_pretrained(str(folder))
            self.model = AutoModelForZeroShotImageClassification.from_pretrained(str(folder)).eval()
        else:
            self.processor = AutoImageProcessor.from_pretrained(str(folder))
            self.model = AutoModelForImageClassification.from_pretrained(str(folder)).eval()

    def __call__(self, data: bytes) -> Any:
        import torch
        from PIL import Image

        image = Image.open(io.BytesIO(data)).convert("RGB")
        with torch.inference_mode():
            if self.clip:
                texts = [f"a photo of a {label}." for label in LABELS]
                inputs = self.processor(images=[image], text=texts, padding=True, return_tensors="pt")
                return self.model(**inputs).logits_per_image.softmax(-1).tolist()
            inputs = self.processor(images=[image], return_tensors="pt")
            return self.model(**inputs).logits.softmax(-1).tolist()


def run(h: Harness) -> None:
    from tests.fixtures.vision import build_clip, build_vit

    h.apply_threads()
    calls = 3 if h.quick else 5
    data = jpeg()
    image = base64.b64encode(data).decode()
    vit = build_vit(h.tmp / "bench-vit", **SIZE)
    clip = build_clip(h.tmp / "bench-clip", **SIZE)
    with h.server() as srv:
        if not srv.has_route("/v1/vision/classify"):
            h.skip("vision classify", "POST /v1/vision/classify is not implemented yet")
            return
        cases = [
            ("classify 1 image: ViT 192x6, 224 px (HTTP vs direct)", "/v1/vision/classify",
             {"model": str(vit), "image": image}, DirectVision(vit, clip=False)),
            ("CLIP zero-shot 1 image x 4 labels: 192x6, 224 px (HTTP vs direct)", "/v1/vision/clip",
             {"model": str(clip), "image": image, "labels": LABELS}, DirectVision(clip, clip=True)),
        ]
        for metric, path, body, direct in cases:
            srv.post(path, json=body)  # load the model (load time is the startup phase's business)
            ours, base = h.interleave(lambda p=path, b=body: burst(lambda: srv.post(p, json=b), calls),
                                      lambda d=direct: burst(lambda: d(data), calls))
            h.result(metric, ours, base, target="<=1.2",
                     note=f"{(ours.median - base.median) * 1000:+.1f} ms added; median of {calls} calls a round")
