"""Category -> loader. Each loader reads the model's own config files to choose the sub-kind."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from core.errors import InvalidRequest

if TYPE_CHECKING:
    from core.resolve import ModelSpec
    from models.base import BaseModel, LoadContext

Loader = Callable[["ModelSpec", "LoadContext"], "BaseModel"]

LOADERS: dict[str, str] = {
    "causal": "models.language:load",
    "encoder": "models.encoder:load",
    "diffusion": "models.diffusion:load",
    "vision": "models.vision:load",
    "audio": "models.audio:load",
    "multimodal": "models.multimodal:load",
}


def get_loader(category: str) -> Loader:
    """The loader of a category, imported on first use (so heavy libraries load lazily)."""
    if category not in LOADERS:
        raise InvalidRequest(f"Unknown model type '{category}'; one of {', '.join(LOADERS)}.", param="type")
    module_name, attr = LOADERS[category].split(":")
    return getattr(importlib.import_module(module_name), attr)
