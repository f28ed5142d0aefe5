"""OpenAI's Responses API on the chat engine: `POST /v1/responses` (streaming too), and the stored responses:
`GET` / `DELETE /v1/responses/{id}`, `GET /v1/responses/{id}/input_items`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Query, Request, Response

from core.errors import InvalidRequest, classify
from core.logs import request_id_var
from core.responses_store import ResponseStore
from routers.chat import EventStream, Meta, collect, open_model, record, release, start_chat
from routers.common import report_ignored, settings_of
from routers.responses_output import EventWriter, output_items, response_object, usage
from routers.responses_wire import (
    ResponseRequest,
    chat_param,
    new_item_id,
    output_as_input,
    to_messages,
)

router = APIRouter()


def store_of(request: Request) -> ResponseStore:
    """The app's response store (made on first use, sized by the responses_store_size setting)."""
    store = getattr(request.app.state, "responses", None)
    if store is None:
        store = request.app.state.responses = ResponseStore(settings_of(request).responses_store_size)
    return store


@router.post("/v1/responses")
async def create_response(body: ResponseRequest, request: Request, response: Response) -> Any:
    """A model response to `input` (and the stored conversation of `previous_response_id`)."""
    store = store_of(request)
    items = body.input_items()
    history: list[dict[str, Any]] = []
    if body.previous_response_id is not None:
        previous = store.get(body.previous_response_id, param="previous_response_id")
        history = previous.input_items + output_as_input(previous.response["output"])
    conversation = history + items
    conv = to_messages(conversation, body.instructions, first_new=len(history))
    tools, tool_choice, rf, options = body.chat_tools(), body.chat_tool_choice(), body.response_format(), body.options()
    model, stack = await open_model(request, body, "chat")
    if conv.images and "vision_chat" not in model.capabilities:
        await stack.aclose()
        raise InvalidRequest(f"Model '{body.model or 'default'}' has no vision; it cannot read input_image parts.",
                             param=conv.images[0])
    try:
        prepared, job = await start_chat(request, model, stack, conv.messages, options, 1, tools=tools,
                                         tool_choice=tool_choice, response_format=rf,
                                         parallel_tool_calls=body.parallel_tool_calls)
    except InvalidRequest as exc:
        exc.param = chat_param(exc.param)  # named as the Responses API names it
        raise
    meta = Meta(id=new_item_id("resp"), model=body.model or "default", key=model.model_id,
                prompt_tokens=len(prepared.input_ids))
    ignored = prepared.ignored | body.ignored()

    def save(obj: dict[str, Any]) -> None:
        if body.store:
            store.put(obj, conversation)

    if body.stream:
        return EventStream(_events(request, job, meta, body, save), release(job, stack), ignored)
    async with stack:
        (choice,) = await collect(request, job, 1)
    report_ignored(response, ignored)
    record(request, meta, choice.tokens, [choice.ttft])
    output = output_items(choice.text, choice.tool_calls, choice.finish_reason)
    status = "incomplete" if choice.finish_reason == "length" else "completed"
    obj = response_object(body, meta.id, meta.created, output, status, usage(meta.prompt_tokens, choice.tokens))
    save(obj)
    return obj


async def _events(request: Request, job: Any, meta: Meta, body: ResponseRequest,
                  save: Any) -> AsyncIterator[str]:
    writer = EventWriter(body, meta.id, meta.created)
    for event in writer.start():
        yield event
    try:
        async for ev in job.events():
            for event in writer.delta(ev.text) if ev.text else []:
                yield event
            if ev.finish_reason is None:
                continue
            if ev.finish_reason == "error":
                raise ev.error or RuntimeError("generation failed")
            if ev.finish_reason == "cancelled":
                return
            spent = usage(meta.prompt_tokens, ev.completion_tokens)
            for event in writer.finish(ev.tool_calls, ev.finish_reason, spent):
                yield event
            record(request, meta, ev.completion_tokens, [ev.ttft])
            save(writer.snapshot("incomplete" if ev.finish_reason == "length" else "completed", spent))
    except Exception as exc:  # noqa: BLE001 - reported in-band: the response has started
        _, err, _ = classify(exc, request_id_var.get())
        yield writer.error(err)


@router.get("/v1/responses/{response_id}")
async def get_response(response_id: str, request: Request) -> dict[str, Any]:
    """A stored response, as it was returned."""
    return store_of(request).get(response_id, param="response_id").response


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, request: Request) -> dict[str, Any]:
    store_of(request).delete(response_id)
    return {"id": response_id, "object": "response", "deleted": True}


@router.get("/v1/responses/{response_id}/input_items")
async def list_input_items(response_id: str, request: Request, order: Literal["asc", "desc"] = "desc",
                           limit: int = Query(20, ge=1, le=100), after: str | None = None) -> dict[str, Any]:
    """The input items of a stored response's conversation (newest first by default, as OpenAI lists them)."""
    stored = store_of(request).get(response_id, param="response_id")
    items = [{"id": item.get("id") or f"item_{response_id}_{i}", **item} for i, item in enumerate(stored.input_items)]
    items = [_as_listed(item) for item in (items[::-1] if order == "desc" else items)]
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise InvalidRequest(f"No input item with id '{after}' in this response.", param="after")
        items = items[ids.index(after) + 1:]
    page = items[:limit]
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit}


def _as_listed(item: dict[str, Any]) -> dict[str, Any]:
    """An input item as the API lists it: messages with typed content parts and a status."""
    if item.get("type", "message") != "message":
        return {"status": "completed", **item}
    content = item.get("content")
    kind = "output_text" if item.get("role") == "assistant" else "input_text"
    parts = [{"type": kind, "text": content}] if isinstance(content, str) else content
    return {**item, "type": "message", "content": parts, "status": "completed"}
