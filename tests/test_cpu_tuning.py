"""The transformers engine's CPU tuning (models/language/cpu_tuning.py): bf16 and all physical cores for a
model of BIG_MODEL parameters or more when `dtype` is auto and the CPU has native bf16; fp32 and the process's
threads below it; explicit choices always win. The tiny test model stands in for a big one by lowering the
threshold, so the rule runs on the real load path."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tests.fixtures.language import HELLO_PROMPT, TinyLM

HELLO = [{"role": "user", "content": HELLO_PROMPT}]


@pytest.fixture
def big(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every model counts as big, on a CPU with native bf16."""
    from models.language import cpu_tuning

    monkeypatch.setattr(cpu_tuning, "BIG_MODEL", 0)
    monkeypatch.setattr(cpu_tuning, "native_bf16", lambda: True)
    monkeypatch.setattr(cpu_tuning, "physical_cores", lambda: 2)


def _loaded(client: Any, model: str, **options: Any) -> dict[str, Any]:
    r = client.post("/v1/models/load", json={"model": model, "type": "causal", "options": options})
    assert r.status_code == 200, r.text
    chat = client.post("/v1/chat/completions", json={"model": model, "messages": HELLO, "max_tokens": 4})
    assert chat.status_code == 200, chat.text
    return r.json()


def test_a_big_model_gets_bf16_and_all_physical_cores_on_its_decode_thread(client_factory: Any, tiny_lm: TinyLM,
                                                                           big: None) -> None:
    import torch

    before = torch.get_num_threads()
    item = _loaded(client_factory(torch_threads=0), str(tiny_lm.path))
    assert (item["dtype"], item["threads"]) == ("bf16", 2)
    assert torch.get_num_threads() == before  # the process's own threads are untouched


def test_a_small_model_keeps_fp32_and_the_process_threads(client_factory: Any, tiny_lm: TinyLM) -> None:
    item = _loaded(client_factory(torch_threads=0), str(tiny_lm.path))
    assert (item["dtype"], item["threads"]) == ("fp32", None)


@pytest.mark.parametrize(("settings", "options", "expected"), [
    ({"dtype": "fp32", "torch_threads": 0}, {}, ("fp32", 2)),  # the dtype setting is a choice: kept
    ({"torch_threads": 0}, {"dtype": "fp32", "threads": 1}, ("fp32", 1)),  # per-model options win
    ({"torch_threads": 1}, {}, ("bf16", 1)),  # the torch_threads setting is a choice: kept
])
def test_explicit_dtype_and_threads_win_over_the_rule(client_factory: Any, tiny_lm: TinyLM, big: None,
                                                      settings: dict[str, Any], options: dict[str, Any],
                                                      expected: tuple[str, int]) -> None:
    item = _loaded(client_factory(**settings), str(tiny_lm.path), **options)
    assert (item["dtype"], item["threads"]) == expected


def test_use_threads_sets_only_the_calling_threads_team() -> None:
    import torch

    from models.language.cpu_tuning import use_threads

    default = torch.get_num_threads()
    seen: dict[str, int] = {}
    ready, done = threading.Event(), threading.Event()

    def decode_thread() -> None:
        use_threads(default + 1)
        ready.set()
        done.wait(10)
        seen["decode"] = torch.get_num_threads()

    t = threading.Thread(target=decode_thread)
    t.start()
    ready.wait(10)
    later = threading.Thread(target=lambda: seen.__setitem__("later", torch.get_num_threads()))
    later.start()
    later.join()
    done.set()
    t.join()
    assert seen == {"decode": default + 1, "later": default}
    assert torch.get_num_threads() == default
