"""Labels of the OpenAI SDK calls each SDK-suite test exercises, read by `scripts/sdk_table.py` to write the
compatibility table (docs/sdk-compatibility.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def sdk_call(label: str, area: str) -> Callable[[F], F]:
    """Tag a test with the SDK call it drives (`{name}` placeholders take the test's parameters) and the
    endpoint family it belongs to."""

    def tag(fn: F) -> F:
        fn.sdk_call = label  # type: ignore[attr-defined]
        fn.sdk_area = area  # type: ignore[attr-defined]
        return fn

    return tag
