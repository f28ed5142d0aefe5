"""POST /v1/embeddings on tiny real models: input forms, base64, dimensions, usage, pooling, too-long."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient


@pytest.fixture
def client(encoder_client: TestClient) -> TestClient:
    """The shared encoder app: tiny models load once for the whole file."""
    return encoder_client


def embed(client: TestClient, model: Path | str, input: Any, **extra: Any) -> Any:
    response = client.post("/v1/embeddings", json={"model": str(model), "input": input, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def vectors(body: dict[str, Any]) -> np.ndarray:
    return np.array([d["embedding"] for d in sorted(body["data"], key=lambda d: d["index"])], dtype=np.float32)


def error(response: Any, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return response.json()["error"]


def tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def test_response_shape_and_real_usage(client: TestClient, tiny_bert_folder: Path) -> None:
    texts = ["the cat sat on the mat", "hello world"]
    body = embed(client, tiny_bert_folder, texts)
    assert body["object"] == "list" and body["model"] == str(tiny_bert_folder)
    assert [d["object"] for d in body["data"]] == ["embedding", "embedding"]
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert len(body["data"][0]["embedding"]) == 32
    seen = sum(len(ids) for ids in tokenizer(tiny_bert_folder)(texts)["input_ids"])  # [CLS] and [SEP] included
    assert body["usage"] == {"prompt_tokens": seen, "total_tokens": seen}


def test_a_plain_string_and_a_one_item_list_give_the_same_vector(client: TestClient, tiny_bert_folder: Path) -> None:
    one = vectors(embed(client, tiny_bert_folder, "hello world"))
    listed = vectors(embed(client, tiny_bert_folder, ["hello world"]))
    assert one.shape == (1, 32)
    np.testing.assert_allclose(one, listed, atol=1e-6)


def test_plain_transformers_folder_uses_mean_pooling_and_l2(client: TestClient, tiny_bert_folder: Path) -> None:
    import torch
    from transformers import AutoModel

    text = "the weather is nice today"
    got = vectors(embed(client, tiny_bert_folder, text))[0]
    enc = tokenizer(tiny_bert_folder)(text, return_tensors="pt")
    with torch.inference_mode():
        hidden = AutoModel.from_pretrained(str(tiny_bert_folder))(**enc).last_hidden_state[0]
    expected = hidden.mean(0)
    expected = (expected / expected.norm()).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert abs(float(np.linalg.norm(got)) - 1.0) < 1e-5


def test_sentence_transformers_pooling_is_used_and_visible(client: TestClient, tiny_bert_folder: Path,
                                                            tiny_st_folder: Path) -> None:
    text = "the cat sat on the mat"
    plain = vectors(embed(client, tiny_bert_folder, text))[0]
    cls = vectors(embed(client, tiny_st_folder, text))[0]
    assert float(plain @ cls) < 0.999  # same weights, different pooling: different vectors
    info = client.get(f"/v1/models/{tiny_st_folder}").json()
    assert info["status"] == "loaded" and info["pooling"] == "cls" and info["normalize"] is True
    assert info["kind"] == "sentence-transformers" and info["max_tokens"] == 32
    plain_info = client.get(f"/v1/models/{tiny_bert_folder}").json()
    assert plain_info["pooling"] == "mean" and plain_info["kind"] == "transformers"


def test_dense_layer_and_no_normalisation_follow_the_config(client: TestClient, tiny_st_dense_folder: Path) -> None:
    got = vectors(embed(client, tiny_st_dense_folder, ["the cat", "a dog was sitting on a mat"]))
    assert got.shape == (2, 16)
    assert np.all(np.abs(got) <= 1.0)  # tanh activation of the Dense layer
    assert abs(float(np.linalg.norm(got[0])) - 1.0) > 1e-3  # no Normalize module: not unit length
    info = client.get(f"/v1/models/{tiny_st_dense_folder}").json()
    assert info["pooling"] == "weightedmean" and info["dimensions"] == 16 and info["normalize"] is False


def test_base64_is_little_endian_float32_of_the_float_vector(client: TestClient, tiny_st_folder: Path) -> None:
    texts = ["hello world", "the sun is red"]
    floats = vectors(embed(client, tiny_st_folder, texts))
    b64 = embed(client, tiny_st_folder, texts, encoding_format="base64")
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in b64["data"]])
    assert decoded.tobytes() == floats.astype("<f4").tobytes()


def test_dimensions_truncates_and_renormalises(client: TestClient, tiny_st_dense_folder: Path) -> None:
    full = vectors(embed(client, tiny_st_dense_folder, "the cat sat"))[0]
    short = vectors(embed(client, tiny_st_dense_folder, "the cat sat", dimensions=5))[0]
    assert short.shape == (5,)
    np.testing.assert_allclose(short, full[:5] / np.linalg.norm(full[:5]), atol=1e-6)
    assert abs(float(np.linalg.norm(short)) - 1.0) < 1e-5


@pytest.mark.parametrize("dims", [0, -3, 33])
def test_dimensions_out_of_range_is_a_400(client: TestClient, tiny_st_folder: Path, dims: int) -> None:
    err = error(client.post("/v1/embeddings", json={"model": str(tiny_st_folder), "input": "x",
                                                    "dimensions": dims}))
    assert err["param"] == "dimensions" and err["code"] == "invalid_value"


def test_token_id_inputs_are_fed_as_given(client: TestClient, tiny_bert_folder: Path) -> None:
    ids = tokenizer(tiny_bert_folder)("the cat sat on the mat")["input_ids"]
    from_text = vectors(embed(client, tiny_bert_folder, "the cat sat on the mat"))[0]
    single = embed(client, tiny_bert_folder, ids)
    assert len(single["data"]) == 1 and single["usage"]["prompt_tokens"] == len(ids)
    np.testing.assert_allclose(vectors(single)[0], from_text, atol=1e-5)
    raw = embed(client, tiny_bert_folder, [ids[1:-1], ids])  # without specials: no [CLS]/[SEP] added
    got = vectors(raw)
    assert raw["usage"]["prompt_tokens"] == 2 * len(ids) - 2
    np.testing.assert_allclose(got[1], from_text, atol=1e-5)
    assert float(got[0] @ got[1]) < 0.9999


def test_token_ids_outside_the_vocabulary_are_a_400(client: TestClient, tiny_bert_folder: Path) -> None:
    err = error(client.post("/v1/embeddings", json={"model": str(tiny_bert_folder), "input": [[5, 6], [7, 10**6]]}))
    assert err["param"] == "input.1"


@pytest.mark.parametrize(("payload", "param"), [
    ([], "input"),
    (["ok", 5], "input.1"),
    (["ok", []], "input.1"),
    (["ok", [1, "x"]], "input.1"),
    (None, "input"),
])
def test_malformed_input_is_a_400_naming_the_field(client: TestClient, tiny_bert_folder: Path, payload: Any,
                                                   param: str) -> None:
    err = error(client.post("/v1/embeddings", json={"model": str(tiny_bert_folder), "input": payload}))
    assert err["param"] == param


def test_an_empty_text_is_a_400_only_where_the_model_sees_no_tokens(client: TestClient, tiny_bert_folder: Path,
                                                                    tiny_lm: Any) -> None:
    assert len(embed(client, tiny_bert_folder, ["ok", ""])["data"]) == 2  # [CLS] [SEP]: something to embed
    for payload, param in (("", "input.0"), (["ok", ""], "input.1")):  # a causal LM's tokenizer adds nothing
        err = error(client.post("/v1/embeddings", json={"model": str(tiny_lm.path), "input": payload}))
        assert err["param"] == param and err["code"] == "invalid_value"


def test_unknown_encoding_format_is_a_400(client: TestClient, tiny_bert_folder: Path) -> None:
    err = error(client.post("/v1/embeddings", json={"model": str(tiny_bert_folder), "input": "x",
                                                    "encoding_format": "int8"}))
    assert err["param"] == "encoding_format"


def test_too_long_input_is_a_400_naming_its_index(client: TestClient, tiny_st_folder: Path) -> None:
    long_text = "the cat " * 40  # about 80 tokens, the folder's max_seq_length is 32
    err = error(client.post("/v1/embeddings", json={"model": str(tiny_st_folder), "input": ["short", long_text]}))
    assert err["param"] == "input.1" and "32" in err["message"]
    ids_err = error(client.post("/v1/embeddings", json={"model": str(tiny_st_folder), "input": [[5] * 33]}))
    assert ids_err["param"] == "input.0"


def test_truncate_true_cuts_to_the_maximum(client: TestClient, tiny_st_folder: Path) -> None:
    long_text = "the cat " * 40
    body = embed(client, tiny_st_folder, ["short", long_text, [5] * 40], truncate=True)
    assert len(body["data"]) == 3
    short_tokens = len(tokenizer(tiny_st_folder)("short")["input_ids"])
    assert body["usage"]["prompt_tokens"] == short_tokens + 32 + 32


def test_prompt_name_prepends_the_models_prompt(client: TestClient, tiny_st_folder: Path) -> None:
    plain = embed(client, tiny_st_folder, "the cat")
    prompted = embed(client, tiny_st_folder, "the cat", prompt_name="query")
    by_hand = embed(client, tiny_st_folder, "query: the cat")
    np.testing.assert_allclose(vectors(prompted), vectors(by_hand), atol=1e-6)
    assert prompted["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"]
    assert not np.allclose(vectors(plain), vectors(prompted), atol=1e-4)
    err = error(client.post("/v1/embeddings", json={"model": str(tiny_st_folder), "input": "x",
                                                    "prompt_name": "nope"}))
    assert err["param"] == "prompt_name"


def test_unknown_fields_are_ignored(client: TestClient, tiny_bert_folder: Path) -> None:
    body = embed(client, tiny_bert_folder, "hello", user="u1", tools=[], n_ctx=2048, huggingface_token="hf_x")
    assert len(body["data"]) == 1


def test_a_classifier_cannot_embed(client: TestClient, tiny_classifier_folder: Path) -> None:
    err = error(client.post("/v1/embeddings", json={"model": str(tiny_classifier_folder), "input": "x"}))
    assert err["code"] == "unsupported_model_type"


def test_missing_local_model_is_a_404(client: TestClient, tmp_path: Path) -> None:
    err = error(client.post("/v1/embeddings", json={"model": str(tmp_path / "nope"), "input": "x"}), 404)
    assert err["code"] == "model_not_found"


def test_default_prompt_applies_and_is_left_out_of_pooling(client: TestClient, tiny_st_prompt_folder: Path) -> None:
    default = embed(client, tiny_st_prompt_folder, "the cat")
    document = embed(client, tiny_st_prompt_folder, "the cat", prompt_name="document")  # the empty prompt
    prompt_tokens = len(tokenizer(tiny_st_prompt_folder)("query: ", add_special_tokens=False)["input_ids"])
    assert default["usage"]["prompt_tokens"] == document["usage"]["prompt_tokens"] + prompt_tokens
    assert not np.allclose(vectors(default), vectors(document), atol=1e-4)
    info = client.get(f"/v1/models/{tiny_st_prompt_folder}").json()
    assert info["pooling"] == ["mean", "lasttoken"] and info["dimensions"] == 64
    assert info["include_prompt"] is False and info["default_prompt_name"] == "query"
    assert info["prompts"] == ["document", "query"]
    err = error(client.post("/v1/embeddings", json={"model": str(tiny_st_prompt_folder), "input": [[5, 6]],
                                                    "prompt_name": "query"}))
    assert err["param"] == "prompt_name"
