"""Prompts from chat messages: the model's own chat template (tools included when it supports them), or a
documented plain-text fallback for models without one.

Fallback format (one line per message, then the assistant cue; generation also stops at a new turn):

    System: You are terse.
    User: Hi
    Assistant: Hello!
    User: What is 2+2?
    Assistant:
"""

from __future__ import annotations

import json
from typing import Any

from core.errors import InvalidRequest

FALLBACK_ROLES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant",
                  "tool": "Tool"}
FALLBACK_STOPS = ["\nUser:", "\nSystem:"]


def template_of(tokenizer: Any) -> str | None:
    """The chat template text, or None."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()), None)
    return template or None


def supports_tools(template: str | None) -> bool:
    """True when the template renders a `tools` list."""
    return bool(template) and "tools" in template  # type: ignore[operator]


def hermes_style(template: str | None) -> bool:
    """True when the template asks for Hermes / Qwen `<tool_call>` blocks."""
    return bool(template) and "<tool_call>" in template  # type: ignore[operator]


def _text_of(content: Any, where: str, allow_images: bool) -> str | list[dict[str, Any]]:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind in ("text", "input_text"):
            parts.append(str(part.get("text", "")))
        elif kind in ("image_url", "input_image", "image"):
            if not allow_images:
                raise InvalidRequest("This model is text-only; it cannot read image_url content parts.",
                                     param=f"{where}.{j}")
            return list(content)
        else:
            raise InvalidRequest(f"Unsupported content part type '{kind}'.", param=f"{where}.{j}.type")
    return "\n".join(parts)


def _tool_call(call: dict[str, Any]) -> dict[str, Any]:
    fn = dict(call.get("function") or {})
    args = fn.get("arguments")
    if isinstance(args, str):
        try:
            fn["arguments"] = json.loads(args) if args.strip() else {}
        except ValueError:
            pass
    return {"id": call.get("id"), "type": "function", "function": fn}


def normalize(messages: list[dict[str, Any]], allow_images: bool = False) -> list[dict[str, Any]]:
    """OpenAI messages -> what HF templates expect (text content, `developer` as `system`, tool-call
    arguments as objects)."""
    out = []
    for i, msg in enumerate(messages):
        role = msg["role"]
        item: dict[str, Any] = {"role": "system" if role == "developer" else role,
                                "content": _text_of(msg.get("content"), f"messages.{i}.content", allow_images)}
        if msg.get("tool_calls"):
            item["tool_calls"] = [_tool_call(c) for c in msg["tool_calls"]]
        for key in ("tool_call_id", "name"):
            if msg.get(key):
                item[key] = msg[key]
        out.append(item)
    return out


def fallback_prompt(messages: list[dict[str, Any]]) -> str:
    """The plain-text format for models without a chat template."""
    lines = []
    for msg in messages:
        content = msg["content"] if isinstance(msg["content"], str) else ""
        if msg.get("tool_calls"):
            content += "".join(json.dumps({"name": c["function"].get("name"),
                                           "arguments": c["function"].get("arguments")}) for c in msg["tool_calls"])
        lines.append(f"{FALLBACK_ROLES.get(msg['role'], msg['role'].title())}: {content}")
    return "\n".join(lines) + "\nAssistant:"


def render(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
    """The prompt text for a conversation (generation prompt appended)."""
    template = template_of(tokenizer)
    if template is None:
        return fallback_prompt(messages)
    kwargs: dict[str, Any] = {"add_generation_prompt": True, "tokenize": False}
    if tools:
        kwargs["tools"] = tools
    try:
        return tokenizer.apply_chat_template(messages, **kwargs)
    except Exception as exc:  # jinja's TemplateError and friends: the template refused these messages
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
        raise InvalidRequest(f"The model's chat template rejected these messages: {first}",
                             param="messages") from exc
