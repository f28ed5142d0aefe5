"""Image-text-to-text helpers, reusable by any endpoint (captioning, VQA, and vision-language chat).

`vlm_inputs(processor, images, messages)` turns images plus HF-style chat messages into model inputs with
the processor's chat template (a plain-text fallback when it has none); `vlm_generate(...)` runs greedy
generation on them and returns only the new text with real token counts. Messages use the processor
format: `{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "..."}]}`, one
`{"type": "image"}` part per image, in the order of `images`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.errors import InvalidRequest

UNLIMITED = 10**9


@dataclass
class Generated:
    """Generated text, token counts, and whether `max_length` had to be lowered to fit the model."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    clamped: bool = False


def inputs_to(batch: Any, device: str, dtype: Any) -> dict[str, Any]:
    """Move processor outputs to the model's device; floating tensors (pixels) take the model's dtype."""
    out: dict[str, Any] = {}
    for key, value in dict(batch).items():
        if hasattr(value, "to") and hasattr(value, "is_floating_point"):
            value = value.to(device, dtype=dtype) if value.is_floating_point() else value.to(device)
        out[key] = value
    return out


def max_positions(config: Any) -> int:
    """The longest token sequence the model's text side can hold (UNLIMITED when it does not say)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(text, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return UNLIMITED


def token_budget(max_length: int, used: int, limit: int, field: str) -> tuple[int, bool]:
    """(new tokens allowed, clamped?) for a request asking `max_length` new tokens after `used` tokens."""
    room = limit - used
    if room < 1:
        raise InvalidRequest(f"'{field}' is too long for this model ({used} tokens with the image; "
                             f"the model holds {limit}).", param=field)
    return min(max_length, room), max_length > room


def _plain_prompt(processor: Any, messages: list[dict[str, Any]], n_images: int) -> str:
    """Fallback without a chat template: the processor's image tokens, then the text parts."""
    texts = [part.get("text", "") for m in messages for part in
             (m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}])
             if part.get("type") == "text"]
    text = "\n".join(t for t in texts if t)
    image_token = getattr(processor, "image_token", None)
    if image_token and n_images and image_token not in text:
        text = image_token * n_images + text
    return text


def vlm_inputs(processor: Any, images: list[Any], messages: list[dict[str, Any]] | None = None,
               text: str | None = None) -> Any:
    """Processor outputs (pt tensors) for images plus chat messages (templated) or a raw text prompt."""
    if messages is not None and getattr(processor, "chat_template", None):
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    elif messages is not None:
        text = _plain_prompt(processor, messages, len(images))
    kwargs: dict[str, Any] = {"return_tensors": "pt"}
    if images:
        kwargs["images"] = images
    if text is not None:
        kwargs["text"] = [text]
    return processor(**kwargs)


def vlm_generate(model: Any, processor: Any, inputs: Any, max_new_tokens: int, clamped: bool = False,
                 **generate_kwargs: Any) -> Generated:
    """Greedy generation on `vlm_inputs(...)` outputs; only the newly generated text is returned."""
    import torch

    batch = inputs_to(inputs, str(model.device), model.dtype)
    prompt = batch.get("input_ids")
    generate_kwargs.setdefault("do_sample", False)
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, **generate_kwargs)
    sequence = out[0]
    n_prompt = int(prompt.shape[1]) if prompt is not None else 0
    if prompt is not None and sequence.shape[0] >= n_prompt and torch.equal(sequence[:n_prompt].cpu(),
                                                                             prompt[0].cpu()):
        sequence = sequence[n_prompt:]  # decoder-only models echo the prompt
    return Generated(text=_decode(processor, sequence), prompt_tokens=n_prompt,
                     completion_tokens=_count_generated(processor, sequence), clamped=clamped)


def _decode(processor: Any, ids: Any) -> str:
    return str(processor.decode(ids, skip_special_tokens=True)).strip()


def _count_generated(processor: Any, ids: Any) -> int:
    """Generated tokens, not counting padding, a decoder start token or the final end-of-sequence token."""
    tokenizer = getattr(processor, "tokenizer", processor)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    values = [int(i) for i in ids.tolist()]
    while values and values[-1] in special:
        values.pop()
    while values and values[0] in special:
        values.pop(0)
    return len(values)
