"""The TorchScript fast path of text encoders: traced after the first batch, checked against the eager model,
refused when it does not match or cannot be taken, and off when the operator says so."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from models.encoder import trace as encoder_trace
from models.encoder.text import TRACE_AFTER_ITEMS, TextEncoderBase, TextItem
from models.encoder.trace import build_traced

TEXTS = ["hello", "the cat sat on the mat", "a dog was sitting on a mat today in paris", "red",
         "what is the capital of france and why is it paris"]
ENOUGH = (TEXTS * TRACE_AFTER_ITEMS)[:TRACE_AFTER_ITEMS]  # one request that makes a model try its trace


def loaded(client: TestClient, folder: Path | str) -> TextEncoderBase:
    """The loaded model of `folder` (or alias), once its worker thread has run everything queued (the trace attempt)."""
    model = client.app.state.manager.find(str(folder))[0].model  # type: ignore[attr-defined]
    model.executor.submit(lambda: None).result(timeout=60)
    return model


def items(texts: list[str]) -> list[TextItem]:
    return [TextItem(index=i, text=t, truncate=True) for i, t in enumerate(texts)]


def batches() -> list[list[str]]:
    """Batches of shapes the trace was not taken at: one row, many rows, rows longer than the example."""
    long = " ".join(TEXTS)
    return [[TEXTS[0]], TEXTS, [long, TEXTS[3]], [TEXTS[1]] * 7]


def test_an_embedding_model_serves_through_a_checked_trace_once_it_has_served_enough_inputs(
        client_factory: Callable[..., TestClient], tiny_st_dense_folder: Path) -> None:
    client = client_factory()
    body = {"model": str(tiny_st_dense_folder), "input": "hi"}
    for _ in range(3):  # a model loaded for a request or two never pays for the attempt
        assert client.post("/v1/embeddings", json=body).status_code == 200
    model = loaded(client, tiny_st_dense_folder)
    assert model.forward_kind == "eager" and model._traced is None
    first = client.post("/v1/embeddings", json={"model": str(tiny_st_dense_folder), "input": ENOUGH})
    assert first.status_code == 200
    model = loaded(client, tiny_st_dense_folder)
    assert model.forward_kind == "torchscript" and model._traced is not None
    assert client.get(f"/v1/models/{tiny_st_dense_folder}").json()["forward"] == "torchscript"
    again = client.post("/v1/embeddings", json={"model": str(tiny_st_dense_folder), "input": ENOUGH})
    np.testing.assert_allclose([d["embedding"] for d in again.json()["data"]],
                               [d["embedding"] for d in first.json()["data"]], atol=1e-5)


@pytest.mark.parametrize("fixture", ["tiny_bert_folder", "tiny_st_folder"])
def test_traced_vectors_equal_eager_vectors_for_batches_of_any_shape(
        client_factory: Callable[..., TestClient], request: pytest.FixtureRequest, fixture: str) -> None:
    folder: Path = request.getfixturevalue(fixture)
    client = client_factory()
    client.post("/v1/embeddings", json={"model": str(folder), "input": ENOUGH})
    model = loaded(client, folder)
    assert model.forward_kind == "torchscript"
    traced = model._traced
    for texts in batches():
        model._traced = None
        eager = np.stack([v for v, _ in model.embed_batch(items(texts))])  # type: ignore[attr-defined]
        model._traced = traced
        fast = np.stack([v for v, _ in model.embed_batch(items(texts))])  # type: ignore[attr-defined]
        np.testing.assert_allclose(fast, eager, atol=1e-5)


def test_classifiers_and_cross_encoders_are_traced_too(client_factory: Callable[..., TestClient],
                                                       tiny_classifier_folder: Path,
                                                       tiny_cross_encoder_folder: Path) -> None:
    client = client_factory()
    first = client.post("/v1/classify", json={"model": str(tiny_classifier_folder), "input": ENOUGH}).json()
    assert loaded(client, tiny_classifier_folder).forward_kind == "torchscript"
    again = client.post("/v1/classify", json={"model": str(tiny_classifier_folder), "input": ENOUGH}).json()
    for a, b in zip(first["data"], again["data"], strict=True):
        assert a["label"] == b["label"] and a["score"] == pytest.approx(b["score"], abs=1e-5)
    body = {"model": str(tiny_cross_encoder_folder), "query": "capital of france", "documents": ENOUGH}
    ranked = client.post("/v1/rerank", json=body).json()["results"]
    assert loaded(client, tiny_cross_encoder_folder).forward_kind == "torchscript"
    again_ranked = client.post("/v1/rerank", json=body).json()["results"]
    assert [r["index"] for r in again_ranked] == [r["index"] for r in ranked]
    for a, b in zip(ranked, again_ranked, strict=True):
        assert a["relevance_score"] == pytest.approx(b["relevance_score"], abs=1e-5)


def test_the_trace_setting_off_keeps_the_eager_forward(client_factory: Callable[..., TestClient],
                                                       tiny_bert_folder: Path) -> None:
    client = client_factory(trace_encoders=False)
    assert client.post("/v1/embeddings", json={"model": str(tiny_bert_folder), "input": ENOUGH}).status_code == 200
    model = loaded(client, tiny_bert_folder)
    assert model._traced is None and model.forward_kind == "eager (trace option off)"
    assert client.get(f"/v1/models/{tiny_bert_folder}").json()["forward"] == "eager (trace option off)"


def test_the_trace_option_of_one_model_in_the_config_file_wins(client_factory: Callable[..., TestClient],
                                                                tiny_bert_folder: Path, tmp_path: Path) -> None:
    config = tmp_path / "models.yaml"
    config.write_text(f"models:\n  plain:\n    model: {tiny_bert_folder}\n    type: encoder\n    trace: false\n")
    client = client_factory(config=config)
    assert client.post("/v1/embeddings", json={"model": "plain", "input": ENOUGH}).status_code == 200
    assert loaded(client, "plain").forward_kind == "eager (trace option off)"


def test_a_model_whose_trace_is_refused_still_serves_eagerly(client_factory: Callable[..., TestClient],
                                                             tiny_bert_folder: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("models.encoder.text.build_traced", lambda *a: (None, "trace does not match"))
    client = client_factory()
    first = client.post("/v1/embeddings", json={"model": str(tiny_bert_folder), "input": ENOUGH}).json()
    model = loaded(client, tiny_bert_folder)
    assert model._traced is None and model.forward_kind == "eager (trace does not match)"
    again = client.post("/v1/embeddings", json={"model": str(tiny_bert_folder), "input": ENOUGH}).json()
    assert [d["embedding"] for d in again["data"]] == [d["embedding"] for d in first["data"]]


# ----- build_traced on its own -----------------------------------------------------------------------
class Branchy(torch.nn.Module):
    """Returns different values for padded and unpadded batches: a trace freezes one branch."""

    def forward(self, input_ids: Any, attention_mask: Any) -> Any:
        hidden = input_ids.float().unsqueeze(-1).repeat(1, 1, 4)
        if bool((attention_mask == 0).any()):
            return (hidden * 2,)
        return (hidden,)


class Untraceable(torch.nn.Module):
    def forward(self, input_ids: Any, attention_mask: Any) -> Any:
        if torch.jit.is_tracing():
            raise RuntimeError("this model cannot be traced")
        return (input_ids.float().unsqueeze(-1),)


class Plain(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(1, 3)

    def forward(self, input_ids: Any, attention_mask: Any) -> Any:
        return (self.proj(input_ids.float().unsqueeze(-1)) * attention_mask.unsqueeze(-1),)


def batch(rows: list[list[int]]) -> dict[str, Any]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return {"input_ids": ids, "attention_mask": mask}


NAMES = ("input_ids", "attention_mask")
EXAMPLE = batch([[5, 6], [7, 8, 9, 10]])
CHECKS = [batch([[3]]), batch([[1, 2, 3, 4, 5, 6, 7], [8, 9]])]


def test_a_trace_that_does_not_match_the_model_is_refused() -> None:
    forward, why = build_traced(Branchy(), NAMES, EXAMPLE, CHECKS)
    assert forward is None and "does not match" in why and "(1, 1)" in why


def test_a_model_that_cannot_be_traced_is_refused_with_the_reason() -> None:
    forward, why = build_traced(Untraceable(), NAMES, EXAMPLE, CHECKS)
    assert forward is None and why == "RuntimeError: this model cannot be traced"


def test_a_traceable_model_gives_a_forward_that_matches_it() -> None:
    model = Plain().eval()
    forward, why = build_traced(model, NAMES, EXAMPLE, CHECKS)
    assert forward is not None and why == "torchscript"
    other = batch([[4, 4, 4], [1], [2, 2, 2, 2, 2, 2, 2, 2, 2]])
    with torch.inference_mode():
        torch.testing.assert_close(forward(other), model(**other)[0])


# ----- the graph cache: reloads reuse a graph, and the cache never holds weights --------------------------
def graph_of(model: TextEncoderBase) -> Any:
    return model._traced.graph  # type: ignore[union-attr]


def test_a_reloaded_encoder_reuses_its_cached_graph_and_an_unloaded_one_keeps_no_weights(
        client_factory: Callable[..., TestClient], tiny_st_dense_folder: Path) -> None:
    client = client_factory()
    body = {"model": str(tiny_st_dense_folder), "input": ENOUGH}
    first = client.post("/v1/embeddings", json=body).json()
    graph = graph_of(loaded(client, tiny_st_dense_folder))
    assert client.post("/v1/models/unload", json={"model": str(tiny_st_dense_folder)}).status_code == 200
    assert not graph.in_use
    assert all(t.numel() == 0 for t in graph.module.parameters())  # the cached graph holds no weights
    cached = len(encoder_trace._CACHE)
    for _ in range(3):  # evict and reload: the same graph every time, no new trace (no new leak)
        again = client.post("/v1/embeddings", json=body).json()
        model = loaded(client, tiny_st_dense_folder)
        assert model.forward_kind == "torchscript" and graph_of(model) is graph
        np.testing.assert_allclose([d["embedding"] for d in again["data"]],
                                   [d["embedding"] for d in first["data"]], atol=1e-5)
        assert client.post("/v1/models/unload", json={"model": str(tiny_st_dense_folder)}).status_code == 200
    assert len(encoder_trace._CACHE) == cached


def test_two_loaded_models_of_one_architecture_get_their_own_graphs(
        client_factory: Callable[..., TestClient], tiny_classifier_folder: Path, tmp_path: Path) -> None:
    import shutil

    from transformers import AutoModelForSequenceClassification

    other = tmp_path / "other-classifier"
    shutil.copytree(tiny_classifier_folder, other)
    model = AutoModelForSequenceClassification.from_pretrained(str(other))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1.5)  # same architecture, other weights
    model.save_pretrained(str(other))
    client = client_factory()
    for folder in (tiny_classifier_folder, other):
        assert client.post("/v1/classify", json={"model": str(folder), "input": ENOUGH}).status_code == 200
    a, b = loaded(client, tiny_classifier_folder), loaded(client, other)
    assert a.forward_kind == b.forward_kind == "torchscript" and graph_of(a) is not graph_of(b)
    for model in (a, b):
        traced = model.classify_batch(items(TEXTS))  # type: ignore[attr-defined]
        model._traced, kept = None, model._traced
        eager = model.classify_batch(items(TEXTS))  # type: ignore[attr-defined]
        model._traced = kept
        np.testing.assert_allclose(np.stack([s for s, _ in traced]), np.stack([s for s, _ in eager]), atol=1e-5)
