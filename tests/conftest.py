"""Shared test set-up: offline environment, one torch thread, app and client factories.

Tiny real models come from the plugins in tests/fixtures/ (one per category), built once per run.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from core.settings import Settings  # noqa: E402

pytest_plugins = [
    "tests.fixtures.language",
    "tests.fixtures.encoder",
    "tests.fixtures.diffusion",
    "tests.fixtures.vision",
    "tests.fixtures.audio",
    "tests.fixtures.multimodal",
    "tests.fixtures.speech",
]


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder under which the tiny models of this run are saved."""
    return tmp_path_factory.mktemp("tiny-models")


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for tests: isolated output dir, one thread, no idle sweeping unless asked."""
    base: dict[str, Any] = {"output_dir": tmp_path / "outputs", "torch_threads": 1, "idle_ttl_seconds": 0,
                            "batch_wait_ms": 2}
    base.update(overrides)
    return Settings(**base)


@pytest.fixture
def app_factory(tmp_path: Path) -> Callable[..., FastAPI]:
    """Build an app with test settings: `app_factory(api_key="k", manager=...)`."""
    from server import create_app

    def build(manager: Any = None, **overrides: Any) -> FastAPI:
        return create_app(make_settings(tmp_path, **overrides), manager=manager)

    return build


@pytest.fixture
def client_factory(app_factory: Callable[..., FastAPI]) -> Iterator[Callable[..., TestClient]]:
    """Open TestClients (lifespan run) that close at the end of the test."""
    opened: list[TestClient] = []

    def open_client(manager: Any = None, raise_server_exceptions: bool = False, **overrides: Any) -> TestClient:
        client = TestClient(app_factory(manager=manager, **overrides),
                            raise_server_exceptions=raise_server_exceptions)
        client.__enter__()
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def client(client_factory: Callable[..., TestClient]) -> TestClient:
    """A client on an app with default test settings and the real model manager."""
    return client_factory()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Modules with `BOTH_ENGINES = True` run each test that uses the tiny chat models on both chat engines."""
    if "tiny_lm" in metafunc.fixturenames and getattr(metafunc.module, "BOTH_ENGINES", False):
        from tests.fixtures.language import ENGINES

        metafunc.parametrize("tiny_lm", ENGINES, indirect=True, scope="session")
