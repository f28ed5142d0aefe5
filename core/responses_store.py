"""Stored responses of `POST /v1/responses` (`store: true`, the default): a bounded in-memory LRU store.

What a later request needs is kept: the response object as returned, and the conversation that led to it (its
input items, those of the responses it continued included, without `instructions`), so `previous_response_id`
continues a conversation and `GET /v1/responses/{id}/input_items` lists it. Nothing is written to disk; a
restart forgets everything, and past `UNIVERSAL_RUNTIME_RESPONSES_STORE_SIZE` responses the least recently used
goes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from core.errors import NotFound


@dataclass
class Stored:
    """One stored response and the input items of its conversation."""

    response: dict[str, Any]
    input_items: list[dict[str, Any]]


class ResponseStore:
    """At most `size` responses by id, least recently used evicted first (thread-safe)."""

    def __init__(self, size: int) -> None:
        self.size = max(0, size)
        self._items: OrderedDict[str, Stored] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, response: dict[str, Any], input_items: list[dict[str, Any]]) -> None:
        if self.size == 0:
            return
        with self._lock:
            self._items[response["id"]] = Stored(response, input_items)
            self._items.move_to_end(response["id"])
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def get(self, response_id: str, param: str | None = None) -> Stored:
        """The stored response; a 404 naming `param` when it is unknown (never stored, deleted or evicted)."""
        with self._lock:
            stored = self._items.get(response_id)
            if stored is not None:
                self._items.move_to_end(response_id)
                return stored
        raise NotFound(f"No stored response with id '{response_id}' (responses are stored in memory, "
                       "with store: true, and the oldest are dropped past the store size).", param=param)

    def delete(self, response_id: str) -> None:
        with self._lock:
            if self._items.pop(response_id, None) is None:
                raise NotFound(f"No stored response with id '{response_id}'.", param="response_id")

    def __len__(self) -> int:
        return len(self._items)
