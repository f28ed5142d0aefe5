"""Tool calls in generated text -> OpenAI `tool_calls`.

Recognised forms: Hermes / Qwen `<tool_call>{"name", "arguments"}</tool_call>` blocks (several allowed,
text before them is content), Llama-3.1 style bare JSON `{"name", "parameters" | "arguments"}` (optionally
after `<|python_tag|>`), and Mistral `[TOOL_CALLS] [{...}, ...]`. Pure Python (no torch).
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
PREFIXES = ("<|python_tag|>", "[TOOL_CALLS]")
_HERMES_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)


@dataclass
class ToolCall:
    """One parsed call."""

    name: str
    arguments: str  # JSON text
    id: str = ""

    def __post_init__(self) -> None:
        self.id = self.id or "call_" + secrets.token_hex(12)

    def to_openai(self, index: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "type": "function",
                               "function": {"name": self.name, "arguments": self.arguments}}
        if index is not None:
            out = {"index": index, **out}
        return out


def _call_from(obj: Any) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    if isinstance(obj.get("function"), dict):  # {"type": "function", "function": {...}}
        return _call_from(obj["function"])
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return ToolCall(obj["name"], args)
    return ToolCall(obj["name"], json.dumps(args, ensure_ascii=False))


def _calls_from_json(text: str) -> list[ToolCall] | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    items = data if isinstance(data, list) else [data]
    calls = [_call_from(item) for item in items]
    return calls if calls and all(c is not None for c in calls) else None  # type: ignore[return-value]


def parse_tool_calls(text: str, names: set[str] | None = None) -> tuple[str | None, list[ToolCall]]:
    """(content, calls) from a complete generation; calls is empty when the text holds none, or when `names`
    is given and a call names another function (plain JSON answers are not mistaken for calls). A call that
    repeats an earlier one of the same answer exactly (name and arguments) is dropped: small models loop."""
    content, calls = _parse(text)
    if names is not None and any(c.name not in names for c in calls):
        return text, []
    seen: set[tuple[str, str]] = set()
    unique = [c for c in calls if (c.name, c.arguments) not in seen and not seen.add((c.name, c.arguments))]
    return content, unique


def _parse(text: str) -> tuple[str | None, list[ToolCall]]:
    if HERMES_OPEN in text:
        head = text[: text.index(HERMES_OPEN)]
        calls = []
        blocks = _HERMES_BLOCK.findall(text)
        for i, block in enumerate(blocks):
            parsed = _calls_from_json(block)
            if parsed is None:
                if calls and i == len(blocks) - 1 and not text.rstrip().endswith(HERMES_CLOSE):
                    break  # a last call cut off by max_tokens: the complete ones before it stand
                return text, []
            calls += parsed
        return (head if head.strip() else None), calls
    stripped = text.strip()
    for prefix in PREFIXES:
        if stripped.startswith(prefix):
            stripped = stripped[len(prefix):].strip()
    if stripped.startswith(("{", "[")):
        calls = _calls_from_json(stripped)
        if calls:
            return None, calls
    return text, []


class ToolStreamParser:
    """Splits streamed text into content deltas and, at the end, tool calls.

    Text that may be the start of a tool call (a prefix of `<tool_call>`, or output beginning with `{`, `[`
    or a tool prefix) is held back until it is clear; a call is reported once complete.
    """

    def __init__(self, names: set[str] | None = None) -> None:
        self.names = names
        self.buffer = ""
        self.mode = "undecided"  # undecided | content | calls
        self.content_sent = ""

    def feed(self, text: str) -> str:
        """Add generated text; return content that is safe to stream now."""
        self.buffer += text
        if self.mode == "calls":
            return ""
        if self.mode == "undecided":
            lead = self.buffer.lstrip()
            if not lead:
                return ""
            starts = lead.startswith(("{", "[", HERMES_OPEN) + PREFIXES)
            maybe = any(p.startswith(lead) for p in (HERMES_OPEN, *PREFIXES))
            if starts:
                self.mode = "calls"
                return ""
            if maybe:
                return ""
            self.mode = "content"
        # content mode: stream everything before a (possible) Hermes opening tag
        at = self.buffer.find(HERMES_OPEN)
        if at >= 0:
            out, self.buffer = self.buffer[:at], self.buffer[at:]
            self.mode = "calls"
            self.content_sent += out
            return out
        hold = 0
        for n in range(min(len(HERMES_OPEN) - 1, len(self.buffer)), 0, -1):
            if self.buffer.endswith(HERMES_OPEN[:n]):
                hold = n
                break
        cut = len(self.buffer) - hold
        out, self.buffer = self.buffer[:cut], self.buffer[cut:]
        self.content_sent += out
        return out

    def finish(self) -> tuple[str, list[ToolCall]]:
        """At the end: (content still to send, calls)."""
        rest, self.buffer = self.buffer, ""
        if self.mode == "content" and HERMES_OPEN not in rest:
            return rest, []
        content, calls = parse_tool_calls(rest, self.names)
        if not calls:
            return rest, []
        return content or "", calls
