"""The real all-MiniLM-L6-v2 (shipped in a package): default model, semantics, parity with
sentence-transformers, and the clients that call it (OpenAI SDK, LlamaFarm's embedder)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SENTENCES = ["The cat sat on the mat", "A cat was sitting on a mat", "The weather is nice today"]


@pytest.fixture
def client(encoder_client: TestClient) -> TestClient:
    """The shared encoder app: MiniLM loads once for the whole run."""
    return encoder_client


def vectors(body: dict[str, Any]) -> np.ndarray:
    return np.array([d["embedding"] for d in body["data"]], dtype=np.float32)


def post(client: TestClient, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
    response = client.post("/v1/embeddings", json=body, **kw)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_request_without_model_uses_the_packaged_minilm(client: TestClient) -> None:
    body = post(client, {"input": SENTENCES})
    assert body["model"] == MINILM
    got = vectors(body)
    assert got.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    by_alias = post(client, {"model": "default", "input": SENTENCES})
    assert by_alias["model"] == "default"
    np.testing.assert_allclose(vectors(by_alias), got, atol=1e-6)
    info = client.get(f"/v1/models/{MINILM}").json()
    assert info["status"] == "loaded" and info["pooling"] == "mean" and info["normalize"] is True
    assert info["dimensions"] == 384 and info["max_tokens"] == 256


def test_semantics_cat_on_mat_is_closer_than_the_weather(client: TestClient) -> None:
    cat, cat2, weather = vectors(post(client, {"model": MINILM, "input": SENTENCES}))
    assert float(cat @ cat2) > float(cat @ weather) + 0.3


@pytest.mark.slow
def test_vectors_match_sentence_transformers_encode(client: TestClient, minilm_path: Path, tiny_st_folder: Path,
                                                    tiny_st_dense_folder: Path, tiny_st_prompt_folder: Path) -> None:
    from sentence_transformers import SentenceTransformer

    texts = SENTENCES + ["", "a much longer sentence about paris, the capital of france, and its weather " * 3]
    for model, folder in ((MINILM, minilm_path), (str(tiny_st_folder), tiny_st_folder),
                          (str(tiny_st_dense_folder), tiny_st_dense_folder),
                          (str(tiny_st_prompt_folder), tiny_st_prompt_folder)):  # default prompt, excluded
        ours = vectors(post(client, {"model": model, "input": texts, "truncate": True}))
        reference = SentenceTransformer(str(folder), device="cpu").encode(texts, convert_to_numpy=True)
        cos = (ours * reference).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
        assert cos.min() > 0.9999, (model, cos)
        np.testing.assert_allclose(np.linalg.norm(ours, axis=1), np.linalg.norm(reference, axis=1), rtol=1e-4)


def test_openai_sdk_embeddings_create_base64_default(client: TestClient) -> None:
    from openai import OpenAI

    sdk = OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client)
    floats = vectors(post(client, {"model": MINILM, "input": SENTENCES}))
    result = sdk.embeddings.create(model=MINILM, input=SENTENCES)  # the SDK asks for base64
    got = np.array([d.embedding for d in result.data], dtype=np.float32)
    assert got.tobytes() == floats.tobytes()
    assert result.usage.prompt_tokens == result.usage.total_tokens > 0
    as_float = sdk.embeddings.create(model=MINILM, input="The cat sat on the mat", encoding_format="float")
    np.testing.assert_allclose(as_float.data[0].embedding, floats[0], atol=1e-6)  # alone vs in a batch of 3
    short = sdk.embeddings.create(model=MINILM, input="The cat sat on the mat", dimensions=64)
    assert len(short.data[0].embedding) == 64
    raw = client.post("/v1/embeddings", json={"model": MINILM, "input": "x", "encoding_format": "base64"}).json()
    assert len(base64.b64decode(raw["data"][0]["embedding"])) == 384 * 4


def test_llamafarm_embedder_call(client: TestClient) -> None:
    """LlamaFarm's UniversalEmbedder: Bearer 'universal', `input` a plain string for one text."""
    body = post(client, {"model": MINILM, "input": "Hello world"},
                headers={"Authorization": "Bearer universal", "Content-Type": "application/json"})
    assert len(body["data"]) == 1 and len(body["data"][0]["embedding"]) == 384
    assert body["data"][0]["index"] == 0 and body["usage"]["prompt_tokens"] == 4  # [CLS] hello world [SEP]
    batch = post(client, {"model": MINILM, "input": ["Hello world", "How are you?"]},
                 headers={"Authorization": "Bearer universal"})
    assert [d["index"] for d in batch["data"]] == [0, 1]


def test_too_long_minilm_input_names_the_index(client: TestClient) -> None:
    response = client.post("/v1/embeddings", json={"model": MINILM, "input": ["ok", "word " * 300]})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "input.1"
    cut = post(client, {"model": MINILM, "input": ["word " * 300], "truncate": True})
    assert cut["usage"]["prompt_tokens"] == 256
