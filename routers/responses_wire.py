"""Wire types of `POST /v1/responses` (OpenAI's Responses API) and their translation to the chat engine's
inputs: input items -> chat messages, function tools -> chat tools, `text.format` -> `response_format`.

Every check names the field as the Responses API spells it (`input.2.call_id`, `tools.0.type`,
`text.format.schema`), before a model is loaded.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from core.errors import InvalidRequest
from routers.common import OpenAIRequest

# Known request fields the runtime does not act on: reported in X-Ignored-Params when set.
IGNORED_FIELDS = ("reasoning", "truncation", "include", "background", "service_tier", "top_logprobs",
                  "max_tool_calls", "prompt_cache_key", "safety_identifier", "prompt", "conversation", "user")
BUILTIN_TOOLS = ("web_search", "web_search_preview", "web_search_preview_2025_03_11", "file_search",
                 "computer_use_preview", "computer_use", "code_interpreter", "image_generation", "mcp",
                 "local_shell", "shell", "apply_patch", "custom")
ROLES = ("user", "assistant", "system", "developer")


def new_item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


class ResponseRequest(OpenAIRequest):
    """The body of `POST /v1/responses`."""

    model: str | None = None
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    text: dict[str, Any] | None = None
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None

    def ignored(self) -> set[str]:
        extra = self.model_extra or {}
        return {name for name in IGNORED_FIELDS if extra.get(name) not in (None, False, [], {}, "disabled")}

    def input_items(self) -> list[dict[str, Any]]:
        """`input` as a list of items (a string is one user message), each checked."""
        if self.input is None or self.input == [] or self.input == "":
            if self.previous_response_id is None:
                raise InvalidRequest("'input' is required (a string or a list of input items).", param="input")
            return []
        if isinstance(self.input, str):
            return [{"type": "message", "role": "user", "content": self.input}]
        for i, item in enumerate(self.input):
            check_item(item, f"input.{i}")
        return [dict(item) for item in self.input]

    def chat_tools(self) -> list[dict[str, Any]] | None:
        """Function tools in chat form; a built-in tool (web search, file search, ...) is a 400 naming it."""
        out = []
        for i, tool in enumerate(self.tools or []):
            kind = tool.get("type")
            if kind != "function":
                what = f"the built-in tool '{kind}'" if kind in BUILTIN_TOOLS else f"tool type '{kind}'"
                raise InvalidRequest(f"This server runs function tools only; {what} is not available.",
                                     param=f"tools.{i}.type")
            if not isinstance(tool.get("name"), str) or not tool["name"]:
                raise InvalidRequest("A function tool needs a 'name'.", param=f"tools.{i}.name")
            fn = {k: tool[k] for k in ("name", "description", "parameters") if tool.get(k) is not None}
            out.append({"type": "function", "function": fn})
        return out or None

    def chat_tool_choice(self) -> Any:
        choice = self.tool_choice
        if not isinstance(choice, dict):
            return choice
        if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
            raise InvalidRequest("tool_choice must be 'none', 'auto', 'required' or {\"type\": \"function\", "
                                 "\"name\": ...}.", param="tool_choice")
        return {"type": "function", "function": {"name": choice["name"]}}

    def response_format(self) -> dict[str, Any] | None:
        """`text.format` as a chat `response_format`."""
        fmt = (self.text or {}).get("format")
        if fmt is None:
            return None
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind == "text":
            return None
        if kind == "json_object":
            return {"type": "json_object"}
        if kind == "json_schema":
            if not isinstance(fmt.get("schema"), dict):
                raise InvalidRequest("text.format.schema must be a JSON schema object.", param="text.format.schema")
            return {"type": "json_schema", "json_schema": {"name": fmt.get("name", "response"),
                                                           "schema": fmt["schema"], "strict": fmt.get("strict")}}
        raise InvalidRequest(f"Unknown text.format type '{kind}'; use text, json_object or json_schema.",
                             param="text.format.type")

    def options(self) -> dict[str, Any]:
        """Engine options (None = the model's default)."""
        return {"max_new_tokens": self.max_output_tokens, "temperature": self.temperature,
                "top_p": None if self.top_p is None else max(self.top_p, 1e-6), "stop": [],
                "logprobs": False, "top_logprobs": 0}


def check_item(item: Any, where: str) -> None:
    """A 400 naming the field for an input item this server cannot read."""
    if not isinstance(item, dict):
        raise InvalidRequest("An input item must be an object.", param=where)
    kind = item.get("type", "message" if "role" in item else None)
    if kind == "message":
        if item.get("role") not in ROLES:
            raise InvalidRequest(f"A message's role must be one of {', '.join(ROLES)}.", param=f"{where}.role")
        content = item.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                ptype = part.get("type") if isinstance(part, dict) else None
                if ptype in ("input_text", "output_text", "text", "refusal"):
                    continue
                if ptype == "input_image":
                    if not isinstance(part.get("image_url"), str):
                        raise InvalidRequest("An input_image needs 'image_url' (a data: URL or base64); file_id "
                                             "is not available here.", param=f"{where}.content.{j}.image_url")
                    continue
                raise InvalidRequest(f"Unsupported content part type '{ptype}'.", param=f"{where}.content.{j}.type")
        elif not isinstance(content, str):
            raise InvalidRequest("A message needs 'content' (a string or a list of parts).", param=f"{where}.content")
    elif kind == "function_call":
        for key in ("call_id", "name", "arguments"):
            if not isinstance(item.get(key), str):
                raise InvalidRequest(f"A function_call item needs '{key}' (a string).", param=f"{where}.{key}")
    elif kind == "function_call_output":
        if not isinstance(item.get("call_id"), str):
            raise InvalidRequest("A function_call_output item needs 'call_id'.", param=f"{where}.call_id")
        if not isinstance(item.get("output"), str | list):
            raise InvalidRequest("A function_call_output item needs 'output'.", param=f"{where}.output")
    else:
        raise InvalidRequest(f"Unknown input item type '{kind}'; this server reads message, function_call and "
                             "function_call_output items.", param=f"{where}.type")


@dataclass
class Conversation:
    """Chat messages from input items, and where each message came from (for error params)."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    images: list[str] = field(default_factory=list)  # params of input_image parts, in order


def to_messages(items: list[dict[str, Any]], instructions: str | None, first_new: int) -> Conversation:
    """Chat messages of a conversation's items (earlier ones first); `first_new` is the index of this request's
    first item, so params name `input.N` of this request. A function_call_output must answer a function_call
    made earlier in the conversation."""
    conv = Conversation()
    if instructions:
        conv.messages.append({"role": "system", "content": instructions})
    calls: set[str] = set()
    for k, item in enumerate(items):
        where = f"input.{k - first_new}" if k >= first_new else "previous_response_id"
        kind = item.get("type", "message")
        if kind == "function_call":
            calls.add(item["call_id"])
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            last = conv.messages[-1] if conv.messages else None
            if last is not None and last["role"] == "assistant" and last.get("tool_calls") is not None:
                last["tool_calls"].append(call)
            else:
                conv.messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            if item["call_id"] not in calls:
                raise InvalidRequest(f"function_call_output answers call_id '{item['call_id']}', but no "
                                     "function_call with that call_id came before it.", param=f"{where}.call_id")
            output = item["output"] if isinstance(item["output"], str) else json.dumps(item["output"])
            conv.messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": output})
        else:
            conv.messages.append({"role": item["role"], "content": _content(item.get("content"), where, conv)})
    return conv


def _content(content: Any, where: str, conv: Conversation) -> Any:
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content or []):
        if part["type"] == "input_image":
            conv.images.append(f"{where}.content.{j}")
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
        else:
            parts.append({"type": "text", "text": str(part.get("text", part.get("refusal", "")))})
    if all(p["type"] == "text" for p in parts):
        return "\n".join(p["text"] for p in parts)
    return parts


def output_as_input(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A response's output items as input items of the next turn."""
    items = []
    for item in output:
        if item["type"] == "message":
            text = "".join(p.get("text", "") for p in item["content"])
            items.append({"type": "message", "role": "assistant", "content": text, "id": item["id"]})
        elif item["type"] == "function_call":
            items.append({k: item[k] for k in ("type", "id", "call_id", "name", "arguments")})
    return items


def chat_param(param: str | None) -> str | None:
    """A chat-side field name as the Responses API names it (`messages` -> `input`, ...)."""
    if param is None:
        return None
    for chat, responses in (("response_format.json_schema.schema", "text.format.schema"),
                            ("response_format", "text.format"), ("messages", "input")):
        if param.startswith(chat):
            return responses + param[len(chat):]
    return param
