"""POST /v1/chat/completions and POST /v1/completions (OpenAI semantics, streaming included)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request, Response

from core.errors import InvalidRequest, classify
from core.logs import request_id_var
from core.media import load_image
from routers.chat_wire import (
    ChatCompletionRequest,
    CompletionRequest,
    chat_logprobs,
    completion_logprobs,
    new_id,
    now,
    usage,
)
from routers.common import HeldStream, manager_of, report_ignored, request_token, settings_of

router = APIRouter()
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class EventStream(HeldStream):
    """text/event-stream whose clean-up (cancel generation, release the model) runs however it ends."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], Awaitable[None]],
                 ignored: set[str]) -> None:
        super().__init__(content, on_close, "text/event-stream", dict(SSE_HEADERS))
        report_ignored(self, ignored)  # type: ignore[arg-type]


def message_images(messages: list[dict[str, Any]], settings: Any) -> list[Any]:
    """Decode every image part of a conversation, in order (blocking: run it off the event loop)."""
    images = []
    for i, message in enumerate(messages):
        content = message.get("content")
        for j, part in enumerate(content if isinstance(content, list) else []):
            if part.get("type") not in ("image_url", "input_image", "image"):
                continue
            where = f"messages.{i}.content.{j}"
            ref = part.get("image_url", part.get("image"))
            url = ref.get("url") if isinstance(ref, dict) else ref
            field = f"{where}.image_url.url" if isinstance(ref, dict) else f"{where}.image_url"
            if not isinstance(url, str) or not url:
                raise InvalidRequest("An image part needs image_url.url (a data: URL or base64).", param=field)
            images.append(load_image(url, field, settings))
    return images


@dataclass
class Meta:
    id: str
    model: str
    key: str
    created: int = field(default_factory=now)
    prompt_tokens: int = 0


@dataclass
class Choice:
    text: str = ""
    logprobs: list[Any] = field(default_factory=list)
    finish_reason: str | None = None
    tool_calls: list[Any] = field(default_factory=list)
    tokens: int = 0
    ttft: float | None = None


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def record(request: Request, meta: Meta, tokens: int, ttfts: list[float | None]) -> None:
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        known = [t for t in ttfts if t is not None]
        metrics.observe_generation(meta.key, tokens, min(known) if known else None)


async def _watch_disconnect(request: Request, job: Any) -> None:
    """Non-streaming requests: cancel the generation when the client goes away."""
    while True:
        await asyncio.sleep(0.25)
        if await request.is_disconnected():
            job.cancel()
            return


async def collect(request: Request, job: Any, count: int) -> list[Choice]:
    choices = [Choice() for _ in range(count)]
    watcher = asyncio.create_task(_watch_disconnect(request, job))
    try:
        async for ev in job.events():
            c = choices[ev.index]
            c.text += ev.text
            c.logprobs += ev.logprobs
            if ev.finish_reason is not None:
                if ev.finish_reason == "error":
                    raise ev.error or RuntimeError("generation failed")
                c.finish_reason, c.tokens, c.tool_calls, c.ttft = (ev.finish_reason, ev.completion_tokens,
                                                                   ev.tool_calls, ev.ttft)
    finally:
        watcher.cancel()
        job.cancel()
    return choices


async def stream_frames(request: Request, job: Any, meta: Meta, include_usage: bool,
                         frame: Callable[[int, Any, str | None], list[dict[str, Any]]],
                         base: dict[str, Any]) -> AsyncIterator[str]:
    """Content frames as events arrive, a finish frame per choice, the usage frame, then [DONE]; an error
    after the stream started is one error frame."""
    tokens, ttfts = 0, []
    try:
        async for ev in job.events():
            if ev.finish_reason is None:
                if ev.text or ev.logprobs:
                    for f in frame(ev.index, ev, None):
                        yield sse(f)
                continue
            if ev.finish_reason == "error":
                raise ev.error or RuntimeError("generation failed")
            if ev.finish_reason == "cancelled":
                return
            tokens += ev.completion_tokens
            ttfts.append(ev.ttft)
            for f in frame(ev.index, ev, ev.finish_reason):
                yield sse(f)
        if include_usage:
            yield sse({**base, "choices": [], "usage": usage(meta.prompt_tokens, tokens)})
        record(request, meta, tokens, ttfts)
    except Exception as exc:  # noqa: BLE001 - reported in-band: the response has started
        _, body, _ = classify(exc, request_id_var.get())
        yield sse({"error": body["error"]})
    yield "data: [DONE]\n\n"


async def open_model(request: Request, body: Any, capability: str) -> tuple[Any, AsyncExitStack]:
    stack = AsyncExitStack()
    model = await stack.enter_async_context(manager_of(request).acquire(
        body.model, "causal", capability, token=request_token(request, body)))
    return model, stack


def release(job: Any, stack: AsyncExitStack) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        if job is not None:
            job.cancel()
        await stack.aclose()
    return close


async def start_chat(request: Request, model: Any, stack: AsyncExitStack, messages: list[dict[str, Any]],
                     options: dict[str, Any], n: int, **chat: Any) -> tuple[Any, Any]:
    """(prepared prompt, job): render the conversation on the model's worker thread (images decoded for a
    vision model) and start `n` rows; the model is released if anything fails before the job runs."""
    try:
        if "vision_chat" in model.capabilities:
            chat["images"] = await asyncio.to_thread(message_images, messages, settings_of(request))
        prepared = await model.run(model.prepare_chat, messages, **chat)
        matchers = await model.run(model.matchers, prepared, n)
        return prepared, model.start(prepared, options, n, matchers)
    except BaseException:
        await stack.aclose()
        raise


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request, response: Response) -> Any:
    """OpenAI chat completions: template, sampling, stop, n, seed, logprobs, tools, JSON output, streaming."""
    options = body.engine_options()
    messages = body.message_dicts()
    model, stack = await open_model(request, body, "chat")
    rf = body.response_format.model_dump(exclude_none=True) if body.response_format else None
    prepared, job = await start_chat(request, model, stack, messages, options, body.n, tools=body.tools,
                                     tool_choice=body.tool_choice, response_format=rf,
                                     parallel_tool_calls=body.parallel_tool_calls is not False)
    meta = Meta(id=new_id("chatcmpl"), model=body.model or "default", key=model.model_id,
                prompt_tokens=len(prepared.input_ids))
    ignored = prepared.ignored | body.ignored()
    base = {"id": meta.id, "object": "chat.completion.chunk", "created": meta.created, "model": meta.model}
    if body.stream:
        def choice(index: int, delta: dict[str, Any], lp: Any = None, finish: str | None = None) -> dict[str, Any]:
            return {**base, "choices": [{"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}]}

        def frame(index: int, ev: Any, finish: str | None) -> list[dict[str, Any]]:
            if finish is None:
                return [choice(index, {"content": ev.text}, chat_logprobs(ev.logprobs) if ev.logprobs else None)]
            calls = [c.to_openai(k) for k, c in enumerate(ev.tool_calls)]
            return ([choice(index, {"tool_calls": calls})] if calls else []) + [choice(index, {}, finish=finish)]

        async def frames() -> AsyncIterator[str]:
            for i in range(body.n):
                yield sse({**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                "logprobs": None, "finish_reason": None}]})
            async for chunk in stream_frames(request, job, meta, body.include_usage(), frame, base):
                yield chunk

        return EventStream(frames(), release(job, stack), ignored)
    async with stack:
        choices = await collect(request, job, body.n)
    report_ignored(response, ignored)
    record(request, meta, sum(c.tokens for c in choices), [c.ttft for c in choices])
    out = []
    for i, c in enumerate(choices):
        message: dict[str, Any] = {"role": "assistant", "content": c.text}
        if c.tool_calls:
            message = {"role": "assistant", "content": c.text or None,
                       "tool_calls": [call.to_openai() for call in c.tool_calls]}
        out.append({"index": i, "message": message, "logprobs": chat_logprobs(c.logprobs) if body.logprobs else None,
                    "finish_reason": c.finish_reason})
    return {"id": meta.id, "object": "chat.completion", "created": meta.created, "model": meta.model,
            "choices": out, "usage": usage(meta.prompt_tokens, sum(c.tokens for c in choices))}


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request, response: Response) -> Any:
    """The legacy text completion: prompt string(s) or token ids, same options, streaming too."""
    options = body.engine_options()
    prompts = body.prompts()
    model, stack = await open_model(request, body, "completions")
    job = None
    try:
        rf = body.response_format.model_dump(exclude_none=True) if body.response_format else None
        prepared = []
        for i, p in enumerate(prompts):
            param = "prompt" if len(prompts) == 1 else f"prompt.{i}"
            prep = await model.run(model.prepare_completion, p, response_format=rf, param=param)
            prepared.append((prep, await model.run(model.matchers, prep, body.n)))
        job = model.start_many(prepared, options, body.n)
        echoes = [await model.run(model.decode, p) if not isinstance(p, str) else p for p in prompts] \
            if body.echo else None
    except BaseException:
        if job is not None:
            job.cancel()
        await stack.aclose()
        raise
    meta = Meta(id=new_id("cmpl"), model=body.model or "default", key=model.model_id,
                prompt_tokens=sum(len(p.input_ids) for p, _ in prepared))
    base = {"id": meta.id, "object": "text_completion", "created": meta.created, "model": meta.model}
    want_lp = body.logprobs is not None
    if body.stream:
        offsets = [0] * (len(prompts) * body.n)
        started: set[int] = set()

        def frame(index: int, ev: Any, finish: str | None) -> list[dict[str, Any]]:
            text = ev.text if finish is None else ""
            if echoes and index not in started:
                text = echoes[index // body.n] + text
            started.add(index)
            lp = completion_logprobs(ev.logprobs, offsets[index]) if want_lp and ev.logprobs else None
            offsets[index] += len(text)
            return [{**base, "choices": [{"index": index, "text": text, "logprobs": lp, "finish_reason": finish}]}]

        return EventStream(stream_frames(request, job, meta, body.include_usage(), frame, base),
                           release(job, stack), body.ignored())
    async with stack:
        choices = await collect(request, job, len(prompts) * body.n)
    report_ignored(response, body.ignored())
    record(request, meta, sum(c.tokens for c in choices), [c.ttft for c in choices])
    out = []
    for i, c in enumerate(choices):
        prefix = echoes[i // body.n] if echoes else ""
        out.append({"index": i, "text": prefix + c.text, "finish_reason": c.finish_reason,
                    "logprobs": completion_logprobs(c.logprobs, len(prefix)) if want_lp else None})
    return {"id": meta.id, "object": "text_completion", "created": meta.created, "model": meta.model,
            "choices": out, "usage": usage(meta.prompt_tokens, sum(c.tokens for c in choices))}
