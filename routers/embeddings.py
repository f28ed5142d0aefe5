"""Encoder routes: POST /v1/embeddings, /v1/classify and /v1/rerank, all through the model's micro-batcher."""

from __future__ import annotations

import base64
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from core.batching import batcher_for
from core.errors import InvalidRequest
from models.encoder import TextItem
from routers.common import FastJSONResponse, OpenAIRequest, manager_of, request_token, settings_of

router = APIRouter()


# ----- wire types --------------------------------------------------------------------------------
class EmbeddingRequest(OpenAIRequest):
    """OpenAI's embeddings request, plus `truncate` and `prompt_name` (extensions)."""

    model: str | None = None
    input: str | list[Any]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    truncate: bool = Field(False, description="Cut inputs longer than the model's maximum instead of a 400.")
    prompt_name: str | None = Field(None, description="A prompt from the model's sentence-transformers config.")

    def items(self, prompt: str | None) -> list[TextItem]:
        """One TextItem per input; malformed inputs are a 400 naming `input` or `input.N`."""
        value = self.input
        if isinstance(value, str):
            return [TextItem(index=0, text=value, truncate=self.truncate, prompt=prompt)]
        if not value:
            raise InvalidRequest("'input' must not be empty.", param="input")
        if all(_is_token(v) for v in value):
            return [TextItem(index=0, ids=tuple(value), truncate=self.truncate)]
        items = []
        for i, v in enumerate(value):
            if isinstance(v, str):
                items.append(TextItem(index=i, text=v, truncate=self.truncate, prompt=prompt))
            elif isinstance(v, list) and v and all(_is_token(t) for t in v):
                items.append(TextItem(index=i, ids=tuple(v), truncate=self.truncate))
            else:
                raise InvalidRequest(f"Input {i} must be a string or a non-empty list of token ids (integers).",
                                     param=f"input.{i}")
        return items


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class ClassifyRequest(OpenAIRequest):
    """Text classification with a sequence-classification model."""

    model: str | None = None
    input: str | list[Any]
    top_k: int | None = Field(None, ge=1, description="Labels to return per input (default: all).")
    truncate: bool = Field(True, description="Cut over-long inputs (false: a 400 instead).")

    def items(self) -> list[TextItem]:
        """One TextItem per text; anything but a string (or a non-empty list of them) is a 400."""
        texts = [self.input] if isinstance(self.input, str) else self.input
        if not texts:
            raise InvalidRequest("'input' must not be empty.", param="input")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidRequest(f"Input {i} must be a string.", param=f"input.{i}")
        return [TextItem(index=i, text=t, truncate=self.truncate) for i, t in enumerate(texts)]


class LabelScore(BaseModel):
    label: str
    score: float


class Classification(BaseModel):
    index: int
    label: str
    score: float
    labels: list[LabelScore]


class ClassifyResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[Classification]
    usage: Usage


class RerankRequest(OpenAIRequest):
    """Rerank documents against a query with a cross-encoder."""

    model: str | None = None
    query: str
    documents: list[str | dict[str, Any]]
    top_n: int | None = Field(None, ge=1)
    return_documents: bool = False
    truncate: bool = Field(True, description="Cut over-long pairs (false: a 400 instead).")

    def texts(self) -> list[str]:
        """Documents as strings (`{"text": ...}` objects accepted, as Cohere's API sends them)."""
        if not self.documents:
            raise InvalidRequest("'documents' must not be empty.", param="documents")
        out = []
        for i, doc in enumerate(self.documents):
            text = doc.get("text") if isinstance(doc, dict) else doc
            if not isinstance(text, str):
                raise InvalidRequest(f"Document {i} must be a string or an object with a 'text' string.",
                                     param=f"documents.{i}")
            out.append(text)
        return out


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: dict[str, str] | None = None


class RerankResponse(BaseModel):
    model: str
    results: list[RerankResult]
    usage: Usage


def _is_token(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _usage(tokens: int) -> dict[str, int]:
    return {"prompt_tokens": tokens, "total_tokens": tokens}


def _model_name(body: OpenAIRequest, model: Any) -> str:
    """The `model` string the client sent, or the id of the default model it got."""
    return getattr(body, "model", None) or model.model_id


# ----- handlers ----------------------------------------------------------------------------------
@router.post("/v1/embeddings", response_model=EmbeddingResponse)
async def embeddings(body: EmbeddingRequest, request: Request) -> FastJSONResponse:
    """Embed strings or token ids; float or base64 (little-endian float32) vectors."""
    import numpy as np

    if body.dimensions is not None and body.dimensions < 1:
        raise InvalidRequest("'dimensions' must be at least 1.", param="dimensions")
    manager = manager_of(request)
    async with manager.acquire(body.model, "encoder", "embeddings", token=request_token(request, body)) as model:
        prompt = model.prompt_for(body.prompt_name)
        items = body.items(prompt)
        if body.prompt_name is not None and any(it.ids is not None for it in items):
            raise InvalidRequest("'prompt_name' applies to text inputs, not token ids.", param="prompt_name")
        if body.dimensions is not None and body.dimensions > model.dimensions:
            raise InvalidRequest(f"'dimensions' is {body.dimensions} but this model's vectors have "
                                 f"{model.dimensions}.", param="dimensions")
        batcher = batcher_for(model, model.embed_batch, settings_of(request), "embed")
        results = await batcher.submit(items, [it.size for it in items])
    data = []
    for i, (vector, _) in enumerate(results):
        vec = np.asarray(vector, dtype=np.float32)
        if body.dimensions is not None and body.dimensions < vec.shape[0]:
            vec = vec[:body.dimensions]
            norm = float(np.linalg.norm(vec))
            vec = vec / norm if norm > 0 else vec
        vec = vec.astype("<f4")
        out: list[float] | str = base64.b64encode(vec.tobytes()).decode("ascii") \
            if body.encoding_format == "base64" else vec.tolist()
        data.append({"object": "embedding", "index": i, "embedding": out})
    tokens = sum(n for _, n in results)
    return FastJSONResponse({"object": "list", "data": data, "model": _model_name(body, model),
                             "usage": _usage(tokens)})


@router.post("/v1/classify", response_model=ClassifyResponse)
async def classify(body: ClassifyRequest, request: Request) -> FastJSONResponse:
    """Classify texts with a sequence classifier; labels sorted by score."""
    items = body.items()
    manager = manager_of(request)
    async with manager.acquire(body.model, "encoder", "classify", token=request_token(request, body)) as model:
        batcher = batcher_for(model, model.classify_batch, settings_of(request), "classify")
        results = await batcher.submit(items, [it.size for it in items])
        labels = list(model.labels)
    data = []
    for i, (scores, _) in enumerate(results):
        ranked = sorted(zip(labels, (float(s) for s in scores), strict=True), key=lambda p: -p[1])
        ranked = ranked[:body.top_k] if body.top_k else ranked
        data.append({"index": i, "label": ranked[0][0], "score": ranked[0][1],
                     "labels": [{"label": lab, "score": s} for lab, s in ranked]})
    tokens = sum(n for _, n in results)
    return FastJSONResponse({"object": "list", "model": _model_name(body, model), "data": data,
                             "usage": _usage(tokens)})


@router.post("/v1/rerank", response_model=RerankResponse)
async def rerank(body: RerankRequest, request: Request) -> FastJSONResponse:
    """Score each document against the query (sigmoid of a cross-encoder's logit), best first."""
    documents = body.texts()
    items = [TextItem(index=i, text=body.query, pair=d, truncate=body.truncate, param="documents")
             for i, d in enumerate(documents)]
    manager = manager_of(request)
    async with manager.acquire(body.model, "encoder", "rerank", token=request_token(request, body)) as model:
        batcher = batcher_for(model, model.rerank_batch, settings_of(request), "rerank")
        results = await batcher.submit(items, [it.size for it in items])
    scored = sorted(((i, float(scores[0])) for i, (scores, _) in enumerate(results)), key=lambda p: -p[1])
    if body.top_n:
        scored = scored[:body.top_n]
    out = []
    for i, score in scored:
        entry: dict[str, Any] = {"index": i, "relevance_score": score}
        if body.return_documents:
            entry["document"] = {"text": documents[i]}
        out.append(entry)
    tokens = sum(n for _, n in results)
    return FastJSONResponse({"model": _model_name(body, model), "results": out, "usage": _usage(tokens)})
