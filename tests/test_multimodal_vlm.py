"""The reusable image-text-to-text helpers of models/multimodal/vlm.py (captioning, VQA, vision-language chat)."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from core.errors import InvalidRequest
from models.multimodal.vlm import max_positions, token_budget, vlm_generate, vlm_inputs
from tests.fixtures.multimodal import LLAVA_MAX_POSITIONS
from tests.fixtures.vision import image_b64


@pytest.fixture(scope="module")
def llava(tiny_llava: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return (AutoModelForImageTextToText.from_pretrained(str(tiny_llava)).eval(),
            AutoProcessor.from_pretrained(str(tiny_llava)))


def _image(color: tuple[int, int, int]) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(image_b64(color)))).convert("RGB")


def _image_tokens(processor: Any, inputs: Any) -> int:
    return int((inputs["input_ids"][0] == processor.tokenizer.convert_tokens_to_ids("<image>")).sum())


def test_chat_template_with_images_and_text(llava: tuple[Any, Any]) -> None:
    _, processor = llava
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what color"},
                                             {"type": "image"}]}]
    inputs = vlm_inputs(processor, [_image((1, 2, 3)), _image((200, 0, 0))], messages=messages)
    assert inputs["pixel_values"].shape[0] == 2
    assert _image_tokens(processor, inputs) == 2 * 16  # (32 / 8)^2 patches per image
    text = processor.tokenizer.decode(inputs["input_ids"][0], skip_special_tokens=True)
    assert text.startswith("user") and text.endswith("what color assistant")


def test_plain_fallback_without_chat_template(llava: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    _, processor = llava
    monkeypatch.setattr(processor, "chat_template", None)
    messages = [{"role": "user", "content": [{"type": "text", "text": "what color"}, {"type": "image"}]}]
    inputs = vlm_inputs(processor, [_image((1, 2, 3))], messages=messages)
    assert _image_tokens(processor, inputs) == 16
    assert processor.tokenizer.decode(inputs["input_ids"][0], skip_special_tokens=True) == "what color"


def test_generate_returns_only_new_text_with_counts(llava: tuple[Any, Any]) -> None:
    model, processor = llava
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is there"}]}]
    inputs = vlm_inputs(processor, [_image((9, 99, 199))], messages=messages)
    result = vlm_generate(model, processor, inputs, 6)
    assert result.completion_tokens == 6 and len(result.text.split()) == 6
    assert result.prompt_tokens == inputs["input_ids"].shape[1] and not result.clamped
    assert vlm_generate(model, processor, inputs, 6).text == result.text  # greedy: deterministic


def test_token_budget_and_max_positions(llava: tuple[Any, Any]) -> None:
    model, _ = llava
    assert max_positions(model.config) == LLAVA_MAX_POSITIONS
    assert token_budget(10, 20, 64, "prompt") == (10, False)
    assert token_budget(100, 20, 64, "prompt") == (44, True)
    with pytest.raises(InvalidRequest) as info:
        token_budget(5, 64, 64, "question")
    assert info.value.param == "question"
