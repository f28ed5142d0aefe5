"""Wire types of /v1/chat/completions and /v1/completions: request models, their conversion to engine
options, and the OpenAI response / chunk shapes."""

from __future__ import annotations

import secrets
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.errors import InvalidRequest
from routers.common import OpenAIRequest

MAX_STOPS = 16


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


class FunctionCall(_Loose):
    name: str
    arguments: str | dict[str, Any] = "{}"


class ToolCallIn(_Loose):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Loose):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None

    def check(self, where: str) -> None:
        """A 400 naming the field (`messages.N.content`, ...) for what OpenAI refuses in a message: `content`
        is required except in an assistant message that makes tool calls (or a function call, or a refusal);
        a tool message needs the `tool_call_id` it answers; a content list is not empty, and its parts have a
        `type` (text parts their text)."""
        extra = self.model_extra or {}
        if self.content is None:
            if self.role != "assistant":
                raise InvalidRequest(f"A '{self.role}' message needs 'content'.", param=f"{where}.content")
            if not (self.tool_calls or extra.get("function_call") or extra.get("refusal")):
                raise InvalidRequest("An 'assistant' message needs 'content' or 'tool_calls'.",
                                     param=f"{where}.content")
        if self.role == "tool" and self.tool_call_id is None:
            raise InvalidRequest("A 'tool' message needs 'tool_call_id' (the id of the call it answers).",
                                 param=f"{where}.tool_call_id")
        if isinstance(self.content, list):
            if not self.content:
                raise InvalidRequest("'content' must not be an empty list.", param=f"{where}.content")
            for j, part in enumerate(self.content):
                if not isinstance(part.get("type"), str):
                    raise InvalidRequest("A content part needs a 'type'.", param=f"{where}.content.{j}.type")
                if part["type"] in ("text", "input_text") and not isinstance(part.get("text"), str):
                    raise InvalidRequest("A text content part needs 'text' (a string).",
                                         param=f"{where}.content.{j}.text")


class StreamOptions(_Loose):
    include_usage: bool = False


class ResponseFormat(_Loose):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: dict[str, Any] | None = None


class SamplingFields(OpenAIRequest):
    """Fields shared by chat and completions."""

    model: str | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    max_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0)
    response_format: ResponseFormat | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOPS:
            raise InvalidRequest(f"At most {MAX_STOPS} stop sequences.", param="stop")
        return [s for s in stops if s]

    def options(self, max_tokens: int | None, logprobs: bool, top_logprobs: int) -> dict[str, Any]:
        """Engine options; None means 'the model's default'."""
        return {"max_new_tokens": max_tokens, "temperature": self.temperature,
                "top_p": None if self.top_p is None else max(self.top_p, 1e-6), "top_k": self.top_k,
                "presence_penalty": self.presence_penalty, "frequency_penalty": self.frequency_penalty,
                "repetition_penalty": self.repetition_penalty, "seed": self.seed, "stop": self.stops(),
                "logprobs": logprobs, "top_logprobs": top_logprobs}

    def ignored(self) -> set[str]:
        return {"logit_bias"} if self.logit_bias else set()

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None

    def engine_options(self) -> dict[str, Any]:
        if self.top_logprobs and not self.logprobs:
            raise InvalidRequest("top_logprobs needs logprobs: true.", param="top_logprobs")
        return self.options(self.max_completion_tokens or self.max_tokens, bool(self.logprobs),
                            self.top_logprobs or 0)

    def message_dicts(self) -> list[dict[str, Any]]:
        """The messages as plain dicts, once each is checked (a 400 naming the field, before any model loads)."""
        for i, message in enumerate(self.messages):
            message.check(f"messages.{i}")
        return [m.model_dump(exclude_none=True) for m in self.messages]


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str) or (p and all(isinstance(t, int) for t in p)):
            return [p]  # type: ignore[list-item]
        if not p:
            raise InvalidRequest("prompt must not be an empty list.", param="prompt")
        for i, item in enumerate(p):
            if isinstance(item, list) and not item:
                raise InvalidRequest("A token-id prompt must not be empty.", param=f"prompt.{i}")
        return list(p)  # type: ignore[arg-type]

    def engine_options(self) -> dict[str, Any]:
        return self.options(self.max_tokens if self.max_tokens is not None else 16, self.logprobs is not None,
                            self.logprobs or 0)

    def ignored(self) -> set[str]:
        names = super().ignored()
        if self.suffix:
            names.add("suffix")
        if self.best_of and self.best_of > self.n:
            names.add("best_of")
        return names


# ----- responses --------------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


def chat_logprobs(entries: list[Any]) -> dict[str, Any]:
    return {"content": [{"token": e.token, "logprob": e.logprob, "bytes": e.bytes,
                         "top_logprobs": [{"token": t, "logprob": lp, "bytes": b} for t, lp, b in e.top]}
                        for e in entries]}


def completion_logprobs(entries: list[Any], offset: int) -> dict[str, Any]:
    """The legacy shape: tokens, token_logprobs, top_logprobs (token -> logprob) and text_offset."""
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e.token)
    return {"tokens": [e.token for e in entries], "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{t: lp for t, lp, _ in e.top} for e in entries], "text_offset": offsets}


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
