"""Tools for chat models whose template cannot render them: the runtime writes them into the system prompt.

The format is the Hermes / Qwen one (documented in docs/chat.md#tools-on-any-model), which the tool parser
already reads and the tool grammar already forces. A `# Tools` block is appended to the system message (or
becomes one): the functions as JSON schemas inside `<tools></tools>`, and how to call them (one
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` block per call). Earlier tool turns of the
conversation become plain text too: an assistant message's `tool_calls` become `<tool_call>` blocks in its
content, and consecutive `tool` messages one user message in plain words ("The function get_weather returned:
sunny" per result, then "Use these results to answer."), so templates that know only system / user /
assistant render them. Plain words, not Hermes' `<tool_response>` blocks: models without tool training (the
only ones that come here) answered from them, where the packaged SmolLM2 parroted the `<tool_response>` block.
"""

from __future__ import annotations

import json
from typing import Any

RESULTS_CUE = "\nUse these results to answer."
TOOLS_BLOCK = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{signatures}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> \
XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


def tools_block(tools: list[dict[str, Any]]) -> str:
    """The system-prompt block listing `tools` (OpenAI function tools) and the call format."""
    signatures = "\n".join(json.dumps({"type": "function", "function": t.get("function") or {}}, ensure_ascii=False)
                           for t in tools)
    return TOOLS_BLOCK.format(signatures=signatures)


def with_tools(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation with the tools block at the end of its system message (a new one if it has none)."""
    block = tools_block(tools)
    if messages and messages[0]["role"] == "system" and isinstance(messages[0]["content"], str):
        first = messages[0]["content"].rstrip()
        return [{**messages[0], "content": f"{first}\n\n{block}" if first else block}, *messages[1:]]
    return [{"role": "system", "content": block}, *messages]


def call_text(name: str, arguments: Any) -> str:
    """One call as the model is asked to write it."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            pass
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}\n</tool_call>"


def plain_tool_turns(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Assistant tool calls and tool results as text, for templates without tool roles (see the module doc)."""
    names = {c.get("id"): c["function"].get("name") for m in messages for c in m.get("tool_calls") or []}
    out: list[dict[str, Any]] = []
    for msg in messages:
        if msg["role"] == "assistant" and msg.get("tool_calls"):
            calls = "\n".join(call_text(str(c["function"].get("name")), c["function"].get("arguments"))
                              for c in msg["tool_calls"])
            text = msg["content"] if isinstance(msg.get("content"), str) else ""
            out.append({"role": "assistant", "content": f"{text}\n{calls}" if text else calls})
        elif msg["role"] == "tool":
            content = msg["content"] if isinstance(msg["content"], str) else json.dumps(msg["content"])
            name = names.get(msg.get("tool_call_id")) or msg.get("name") or "the tool"
            line = f"The function {name} returned: {content}"
            if out and out[-1].get("_tool_results"):
                out[-1]["content"] = out[-1]["content"].removesuffix(RESULTS_CUE) + "\n" + line + RESULTS_CUE
            else:
                out.append({"role": "user", "content": line + RESULTS_CUE, "_tool_results": True})
        else:
            out.append(msg)
    return [{k: v for k, v in m.items() if k != "_tool_results"} for m in out]
