"""POST /v1/classify and /v1/rerank on tiny real classifiers and a cross-encoder."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient


@pytest.fixture
def client(encoder_client: TestClient) -> TestClient:
    """The shared encoder app: tiny models load once for the whole file."""
    return encoder_client


def post(client: TestClient, route: str, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
    response = client.post(route, json=body)
    assert response.status_code == status, response.text
    return response.json()


def direct_logits(folder: Path, first: list[str], second: list[str] | None = None) -> np.ndarray:
    """Logits straight from transformers, one input at a time (no padding)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    rows = []
    with torch.inference_mode():
        for i, text in enumerate(first):
            enc = tok(text, second[i], return_tensors="pt") if second else tok(text, return_tensors="pt")
            rows.append(model(**enc).logits[0].numpy())
    return np.stack(rows)


def test_classify_softmax_over_id2label_sorted(client: TestClient, tiny_classifier_folder: Path) -> None:
    texts = ["what a great movie", "terrible weather today"]
    body = post(client, "/v1/classify", {"model": str(tiny_classifier_folder), "input": texts})
    assert body["object"] == "list" and body["model"] == str(tiny_classifier_folder)
    logits = direct_logits(tiny_classifier_folder, texts)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    for i, item in enumerate(body["data"]):
        assert item["index"] == i
        scores = [s["score"] for s in item["labels"]]
        assert scores == sorted(scores, reverse=True)
        assert {s["label"] for s in item["labels"]} == {"negative", "neutral", "positive"}
        assert abs(sum(scores) - 1.0) < 1e-5
        got = {s["label"]: s["score"] for s in item["labels"]}
        np.testing.assert_allclose([got["negative"], got["neutral"], got["positive"]], probs[i], atol=1e-5)
        assert (item["label"], item["score"]) == (item["labels"][0]["label"], item["labels"][0]["score"])
    assert body["usage"]["prompt_tokens"] > 0


def test_classify_top_k_and_a_single_string(client: TestClient, tiny_classifier_folder: Path) -> None:
    body = post(client, "/v1/classify", {"model": str(tiny_classifier_folder), "input": "good", "top_k": 1})
    assert len(body["data"]) == 1 and len(body["data"][0]["labels"]) == 1
    err = post(client, "/v1/classify", {"model": str(tiny_classifier_folder), "input": "x", "top_k": 0}, 400)
    assert err["error"]["param"] == "top_k"


def test_multi_label_models_use_sigmoid(client: TestClient, tiny_multilabel_folder: Path) -> None:
    body = post(client, "/v1/classify", {"model": str(tiny_multilabel_folder), "input": "the sky is blue"})
    logits = direct_logits(tiny_multilabel_folder, ["the sky is blue"])[0]
    got = {s["label"]: s["score"] for s in body["data"][0]["labels"]}
    np.testing.assert_allclose([got["negative"], got["neutral"], got["positive"]], 1 / (1 + np.exp(-logits)),
                               atol=1e-5)
    info = client.get(f"/v1/models/{tiny_multilabel_folder}").json()
    assert info["activation"] == "sigmoid" and info["problem_type"] == "multi_label_classification"


def test_concurrent_classify_requests_match_single_ones(client: TestClient, tiny_classifier_folder: Path) -> None:
    texts = ["good", "a terrible terrible movie about dogs", "paris", "what is the capital of france"]
    alone = [post(client, "/v1/classify", {"model": str(tiny_classifier_folder), "input": t})["data"][0]
             for t in texts]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda t: post(client, "/v1/classify", {"model": str(tiny_classifier_folder),
                                                                       "input": t})["data"][0], texts))
    for a, b in zip(alone, together, strict=True):
        assert a["label"] == b["label"] and abs(a["score"] - b["score"]) < 1e-5


def test_an_embedding_model_cannot_classify_or_rerank(client: TestClient, tiny_st_folder: Path) -> None:
    err = post(client, "/v1/classify", {"model": str(tiny_st_folder), "input": "x"}, 400)
    assert err["error"]["code"] == "unsupported_model_type"
    err = post(client, "/v1/rerank", {"model": str(tiny_st_folder), "query": "q", "documents": ["d"]}, 400)
    assert err["error"]["code"] == "unsupported_model_type"


def test_rerank_scores_are_sigmoid_of_the_logit_sorted(client: TestClient, tiny_cross_encoder_folder: Path) -> None:
    query = "what is the capital of france"
    docs = ["paris is the capital of france", "the cat sat on the mat", "blue sky", "dogs"]
    body = post(client, "/v1/rerank", {"model": str(tiny_cross_encoder_folder), "query": query, "documents": docs})
    logits = direct_logits(tiny_cross_encoder_folder, [query] * len(docs), docs)[:, 0]
    expected = 1 / (1 + np.exp(-logits))
    results = body["results"]
    assert [r["index"] for r in results] == list(np.argsort(-expected))
    for r in results:
        assert 0.0 <= r["relevance_score"] <= 1.0 and "document" not in r
        assert abs(r["relevance_score"] - expected[r["index"]]) < 1e-5
    assert body["model"] == str(tiny_cross_encoder_folder)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0


def test_rerank_top_n_return_documents_and_object_documents(client: TestClient,
                                                             tiny_cross_encoder_folder: Path) -> None:
    docs = ["a", {"text": "the sun"}, "red dog"]
    body = post(client, "/v1/rerank", {"model": str(tiny_cross_encoder_folder), "query": "sun", "documents": docs,
                                       "top_n": 2, "return_documents": True})
    assert len(body["results"]) == 2
    texts = ["a", "the sun", "red dog"]
    for r in body["results"]:
        assert r["document"] == {"text": texts[r["index"]]}


@pytest.mark.parametrize(("body", "param"), [
    ({"query": "q", "documents": []}, "documents"),
    ({"query": "q", "documents": ["ok", {"title": "no text"}]}, "documents.1"),
    ({"documents": ["d"]}, "query"),
    ({"query": "q", "documents": ["d"], "top_n": 0}, "top_n"),
])
def test_bad_rerank_requests_are_400s(client: TestClient, tiny_cross_encoder_folder: Path, body: dict[str, Any],
                                      param: str) -> None:
    err = post(client, "/v1/rerank", {"model": str(tiny_cross_encoder_folder), **body}, 400)
    assert err["error"]["param"] == param


def test_rerank_truncates_long_pairs_unless_told_not_to(client: TestClient, tiny_cross_encoder_folder: Path) -> None:
    long_doc = "the cat " * 60  # over the 64 positions of the tiny model
    ok = post(client, "/v1/rerank", {"model": str(tiny_cross_encoder_folder), "query": "q", "documents": [long_doc]})
    assert ok["usage"]["prompt_tokens"] == 64
    err = post(client, "/v1/rerank", {"model": str(tiny_cross_encoder_folder), "query": "q",
                                      "documents": ["ok", long_doc], "truncate": False}, 400)
    assert err["error"]["param"] == "documents.1"


def test_a_multi_label_classifier_cannot_rerank(client: TestClient, tiny_classifier_folder: Path) -> None:
    err = post(client, "/v1/rerank", {"model": str(tiny_classifier_folder), "query": "q", "documents": ["d"]}, 400)
    assert err["error"]["code"] == "unsupported_model_type"


def test_cross_encoder_kind_and_capabilities_are_visible(client: TestClient, tiny_cross_encoder_folder: Path) -> None:
    post(client, "/v1/classify", {"model": str(tiny_cross_encoder_folder), "input": "x"})
    info = client.get(f"/v1/models/{tiny_cross_encoder_folder}").json()
    assert info["kind"] == "cross-encoder" and info["capabilities"] == ["classify", "rerank"]


@pytest.mark.parametrize(("payload", "param"), [([], "input"), (["ok", 3], "input.1"), (None, "input")])
def test_bad_classify_input_is_a_400(client: TestClient, tiny_classifier_folder: Path, payload: Any,
                                     param: str) -> None:
    err = post(client, "/v1/classify", {"model": str(tiny_classifier_folder), "input": payload}, 400)
    assert err["error"]["param"] == param
