"""Multimodal: BLIP captioning and BLIP VQA of one image through the server vs the direct library call.

Models: small BLIP captioning and VQA models (hidden 192, 4 layers, 224-px images, random weights whose
decoders never stop early; tests/fixtures/multimodal.py builder), generating 16 tokens. Ours:
`POST /v1/multimodal/caption` / `/v1/multimodal/vqa` with a base64 JPEG. Baseline: the same work in this
process: decode the JPEG, processor, greedy `generate(max_new_tokens=16)`, decode. Target: <= 1.2x.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

from bench.harness import Harness
from bench.phase_overhead import burst
from bench.phase_vision import jpeg

PHASE = "multimodal"
SIZE = {"hidden": 192, "layers": 4, "image_size": 224, "patch": 16, "max_positions": 64}
TOKENS = 16
QUESTION = "what color is the car"


class DirectBlip:
    """BLIP called directly as transformers documents it (VQA has no pipeline in transformers 5)."""

    def __init__(self, folder: Path, class_name: str) -> None:
        import transformers

        self.processor = transformers.AutoProcessor.from_pretrained(str(folder))
        self.model = getattr(transformers, class_name).from_pretrained(str(folder)).eval()

    def __call__(self, data: bytes, question: str | None = None) -> Any:
        import torch
        from PIL import Image

        image = Image.open(io.BytesIO(data)).convert("RGB")
        inputs = self.processor(images=image, text=question, return_tensors="pt")
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=TOKENS, do_sample=False)
        return self.processor.decode(out[0], skip_special_tokens=True)


def run(h: Harness) -> None:
    from tests.fixtures.multimodal import build_blip

    h.apply_threads()
    calls = 2 if h.quick else 3
    data = jpeg()
    image = base64.b64encode(data).decode()
    caption = build_blip(h.tmp / "bench-blip-caption", "BlipForConditionalGeneration", 10, **SIZE)
    vqa = build_blip(h.tmp / "bench-blip-vqa", "BlipForQuestionAnswering", 11, **SIZE)
    with h.server() as srv:
        if not srv.has_route("/v1/multimodal/caption"):
            h.skip("multimodal caption", "POST /v1/multimodal/caption is not implemented yet")
            return
        cases = [
            (f"caption 1 image, {TOKENS} tokens: BLIP 192x4, 224 px (HTTP vs direct)", "/v1/multimodal/caption",
             {"model": str(caption), "image": image, "max_length": TOKENS},
             DirectBlip(caption, "BlipForConditionalGeneration"), None),
            (f"VQA 1 image, {TOKENS}-token answer: BLIP 192x4, 224 px (HTTP vs direct)", "/v1/multimodal/vqa",
             {"model": str(vqa), "image": image, "question": QUESTION, "max_length": TOKENS},
             DirectBlip(vqa, "BlipForQuestionAnswering"), QUESTION),
        ]
        for metric, path, body, direct, question in cases:
            srv.post(path, json=body)  # load the model
            ours, base = h.interleave(lambda p=path, b=body: burst(lambda: srv.post(p, json=b), calls),
                                      lambda d=direct, q=question: burst(lambda: d(data, q), calls))
            h.result(metric, ours, base, target="<=1.2",
                     note=f"{(ours.median - base.median) * 1000:+.1f} ms added; median of {calls} calls a round")
