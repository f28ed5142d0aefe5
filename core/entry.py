"""A loaded model's bookkeeping entry in the model manager, and the error of a failed load."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from core.contract import BaseModel
from core.errors import APIError
from core.resolve import ModelSpec


class ModelLoadFailed(APIError):
    """500: the model's files exist but loading them failed (corrupt folder, missing weights...)."""

    status = 500
    type = "server_error"
    code = "model_load_failed"


@dataclass
class Entry:
    """One loaded model and its bookkeeping."""

    spec: ModelSpec
    model: BaseModel
    bytes: int
    pinned: bool
    loaded_at: float
    last_used: float
    active: int = 0
    closing: bool = False
    created: int = field(default_factory=lambda: int(time.time()))
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()

    @property
    def key(self) -> tuple[str, str]:
        return (self.spec.key, self.spec.category)
