"""The response object of OpenAI's Responses API, and its streaming events, built from chat engine events.

A generation becomes at most one `message` output item (its text as one `output_text` part) and one
`function_call` item per tool call. `status` is `completed`, or `incomplete` with
`incomplete_details.reason = "max_output_tokens"` when the token budget cut it.

Streaming (`text/event-stream`, `event:` + `data:` lines, no `[DONE]`), in the documented order:
`response.created`, `response.in_progress`; for text `response.output_item.added`,
`response.content_part.added`, `response.output_text.delta`..., `response.output_text.done`,
`response.content_part.done`, `response.output_item.done`; for each call `response.output_item.added`,
`response.function_call_arguments.delta`, `response.function_call_arguments.done`,
`response.output_item.done`; then `response.completed` (or `response.incomplete`). Every event carries a
`sequence_number`; an error after the stream began is one `error` event.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from routers.responses_wire import ResponseRequest, new_item_id


def response_object(body: ResponseRequest, response_id: str, created: int, output: list[dict[str, Any]],
                    status: str, usage: dict[str, Any] | None) -> dict[str, Any]:
    """The `response` object, echoing the request's settings as OpenAI does."""
    fmt = (body.text or {}).get("format") or {"type": "text"}
    return {
        "id": response_id, "object": "response", "created_at": created, "status": status, "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
        "model": body.model or "default", "output": output, "parallel_tool_calls": body.parallel_tool_calls,
        "previous_response_id": body.previous_response_id, "reasoning": {"effort": None, "summary": None},
        "store": body.store, "temperature": body.temperature, "text": {"format": fmt},
        "tool_choice": body.tool_choice or "auto", "tools": body.tools or [], "top_p": body.top_p,
        "truncation": "disabled", "usage": usage, "user": (body.model_extra or {}).get("user"),
        "metadata": body.metadata or {},
    }


def usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [text_part(text)] if text or status != "in_progress" else []}


def call_item(call: Any, arguments: str, status: str) -> dict[str, Any]:
    return {"type": "function_call", "id": "fc_" + call.id.removeprefix("call_"), "call_id": call.id,
            "name": call.name, "arguments": arguments, "status": status}


def output_items(text: str, calls: list[Any], finish: str | None) -> list[dict[str, Any]]:
    """The output of a finished generation."""
    status = "incomplete" if finish == "length" else "completed"
    items = [message_item(new_item_id("msg"), text, status)] if text or not calls else []
    return items + [call_item(c, c.arguments, "completed") for c in calls]


@dataclass
class EventWriter:
    """Streaming events of one response, numbered; tracks the message item while its text streams."""

    body: ResponseRequest
    response_id: str
    created: int = field(default_factory=lambda: int(time.time()))
    sequence: int = 0
    output: list[dict[str, Any]] = field(default_factory=list)
    message_id: str | None = None
    text: str = ""

    def event(self, kind: str, **data: Any) -> str:
        payload = {"type": kind, "sequence_number": self.sequence, **data}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n"

    def snapshot(self, status: str, usage_: dict[str, Any] | None = None) -> dict[str, Any]:
        return response_object(self.body, self.response_id, self.created, self.output, status, usage_)

    def start(self) -> list[str]:
        return [self.event("response.created", response=self.snapshot("in_progress")),
                self.event("response.in_progress", response=self.snapshot("in_progress"))]

    def delta(self, text: str) -> list[str]:
        out = []
        if self.message_id is None:
            self.message_id = new_item_id("msg")
            out.append(self.event("response.output_item.added", output_index=0,
                                  item=message_item(self.message_id, "", "in_progress")))
            out.append(self.event("response.content_part.added", item_id=self.message_id, output_index=0,
                                  content_index=0, part=text_part("")))
        self.text += text
        out.append(self.event("response.output_text.delta", item_id=self.message_id, output_index=0,
                              content_index=0, delta=text, logprobs=[]))
        return out

    def finish(self, calls: list[Any], finish: str | None, usage_: dict[str, Any]) -> list[str]:
        """Close the message item, stream each call, then the final response event."""
        status = "incomplete" if finish == "length" else "completed"
        out = []
        if self.message_id is not None:
            where = {"item_id": self.message_id, "output_index": 0, "content_index": 0}
            out.append(self.event("response.output_text.done", **where, text=self.text, logprobs=[]))
            out.append(self.event("response.content_part.done", **where, part=text_part(self.text)))
            item = message_item(self.message_id, self.text, status)
            self.output.append(item)
            out.append(self.event("response.output_item.done", output_index=0, item=item))
        for call in calls:
            index = len(self.output)
            item = call_item(call, "", "in_progress")
            out.append(self.event("response.output_item.added", output_index=index, item=item))
            out.append(self.event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                                  delta=call.arguments))
            out.append(self.event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                                  name=call.name, arguments=call.arguments))
            done = call_item(call, call.arguments, "completed")
            self.output.append(done)
            out.append(self.event("response.output_item.done", output_index=index, item=done))
        kind = "response.incomplete" if status == "incomplete" else "response.completed"
        out.append(self.event(kind, response=self.snapshot(status, usage_)))
        return out

    def error(self, body: dict[str, Any]) -> str:
        err = body["error"]
        return self.event("error", code=err.get("code"), message=err.get("message"), param=err.get("param"))
