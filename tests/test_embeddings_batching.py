"""Dynamic batching through HTTP: batch invariance, one forward pass for concurrent requests, 429s."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from core.batching import _BATCHERS

TEXTS = ["the cat", "a dog was sitting on a mat today", "hello", "what is the capital of france",
         "the weather is nice", "red", "blue sky over paris", "good movie"]


def embed(client: TestClient, model: Path, input: Any) -> np.ndarray:
    response = client.post("/v1/embeddings", json={"model": str(model), "input": input})
    assert response.status_code == 200, response.text
    return np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def embed_batcher(client: TestClient, folder: Path) -> Any:
    entry = client.app.state.manager.find(str(folder))[0]  # type: ignore[attr-defined]
    return _BATCHERS[entry.model]["embed"]


def test_vectors_are_the_same_alone_or_batched_with_others(client_factory: Callable[..., TestClient],
                                                          tiny_st_dense_folder: Path) -> None:
    client = client_factory(batch_wait_ms=100)
    alone = np.concatenate([embed(client, tiny_st_dense_folder, t) for t in TEXTS])
    with concurrent.futures.ThreadPoolExecutor(len(TEXTS)) as pool:
        together = np.concatenate(list(pool.map(lambda t: embed(client, tiny_st_dense_folder, t), TEXTS)))
    assert embed_batcher(client, tiny_st_dense_folder).largest_batch > 1  # really ran padded together
    assert cosines(alone, together).min() > 0.9999
    in_one_request = embed(client, tiny_st_dense_folder, TEXTS)
    assert cosines(alone, in_one_request).min() > 0.9999


def test_concurrent_requests_share_one_forward_pass(client_factory: Callable[..., TestClient],
                                                    tiny_bert_folder: Path) -> None:
    client = client_factory(batch_wait_ms=300)
    embed(client, tiny_bert_folder, "load it first")
    batcher = embed_batcher(client, tiny_bert_folder)
    before = batcher.batches_run
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda t: embed(client, tiny_bert_folder, t), TEXTS[:6]))
    assert batcher.batches_run - before < 6
    assert batcher.largest_batch >= 2


def test_too_many_concurrent_requests_get_429_with_retry_after(client_factory: Callable[..., TestClient],
                                                               tiny_bert_folder: Path) -> None:
    client = client_factory(max_queue_per_model=2, batch_wait_ms=300)
    embed(client, tiny_bert_folder, "load it first")
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(lambda t: client.post("/v1/embeddings", json={
            "model": str(tiny_bert_folder), "input": t}), TEXTS + TEXTS[:2]))
    statuses = [r.status_code for r in responses]
    assert all(s in (200, 429) for s in statuses), statuses
    assert statuses.count(429) >= 1 and statuses.count(200) >= 2
    for r in responses:
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) >= 1
            assert r.json()["error"]["code"] == "server_overloaded"
            assert r.json()["error"]["type"] == "rate_limit_error"


def test_a_full_batcher_queue_answers_429(client_factory: Callable[..., TestClient], tiny_bert_folder: Path) -> None:
    # queue bound = max_queue_per_model * max_batch_size = 8 * 1 items; one request of 60 items fills it
    client = client_factory(max_queue_per_model=8, max_batch_size=1, batch_wait_ms=0)
    embed(client, tiny_bert_folder, "load it first")
    batcher = embed_batcher(client, tiny_bert_folder)
    big: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: big.setdefault("r", client.post(
        "/v1/embeddings", json={"model": str(tiny_bert_folder), "input": ["the cat sat on the mat"] * 60})))
    worker.start()
    deadline = time.monotonic() + 10
    while batcher.pending < 20 and time.monotonic() < deadline:
        time.sleep(0.002)
    refused = client.post("/v1/embeddings", json={"model": str(tiny_bert_folder), "input": ["hello", "world"]})
    worker.join()
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["Retry-After"]) >= 1
    assert big["r"].status_code == 200 and len(big["r"].json()["data"]) == 60
