"""The loader of category "encoder": embeddings, text classification and reranking.

The sub-kind is read from the model's own files, never from its name:

- `config_sentence_transformers.json` says `"model_type": "CrossEncoder"`, `sentence_bert_config.json`
  says `"transformer_task": "sequence-classification"`, or config.json carries the old CrossEncoder key
  -> cross-encoder (classify; rerank when it has a single output);
- `modules.json` with a Pooling module -> sentence-transformers embedding model;
- config.json `architectures` ending in `ForSequenceClassification` -> classifier (rerank when single-logit);
- any other transformers model -> plain encoder embedded with mean pooling + L2 normalisation.

The sentence-transformers pipeline is run with plain transformers (models/encoder/st.py) rather than by
importing sentence-transformers, whose import alone takes several seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.contract import BaseModel, LoadContext
from core.errors import UnsupportedModelType
from core.resolve import ModelSpec
from models.encoder.st import module_kind, modules_list, read_pipeline
from models.encoder.text import max_tokens, read_json

SPARSE_OR_OTHER = {"SparseEncoder": "sparse (SPLADE) encoders"}


def detect_kind(folder: Path) -> str:
    """'cross-encoder' | 'sentence-transformers' | 'classifier' | 'transformers' from the folder's files."""
    st_config = read_json(folder / "config_sentence_transformers.json") or {}
    config = read_json(folder / "config.json") or {}
    st_type = str(st_config.get("model_type", ""))
    if st_type in SPARSE_OR_OTHER:
        raise UnsupportedModelType(f"This model is a sentence-transformers {st_type}; "
                                   f"{SPARSE_OR_OTHER[st_type]} are not served by this runtime.")
    modules = modules_list(folder)
    first = folder / str(modules[0].get("path") or "") if modules else folder
    sbert = read_json(first / "sentence_bert_config.json") or {}
    archs = [str(a) for a in config.get("architectures") or []]
    if st_type == "CrossEncoder" or sbert.get("transformer_task") == "sequence-classification" or \
            "sbert_ce_default_activation_function" in config:
        return "cross-encoder"
    if any(module_kind(m) == "Pooling" for m in modules):
        return "sentence-transformers"
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "classifier"
    if not config:
        raise UnsupportedModelType("This folder has no config.json; it is not a transformers encoder.")
    return "transformers"


def load(spec: ModelSpec, ctx: LoadContext) -> BaseModel:
    """Load an encoder-category model from a local folder, choosing its class from its config files."""
    if spec.gguf_file:
        raise UnsupportedModelType("GGUF files are served as chat models; embeddings need a transformers folder.")
    if spec.path is None:
        raise UnsupportedModelType("This model has no local files to load.")
    folder = Path(spec.path)
    kind = detect_kind(folder)
    ctx.progress(f"loading {kind} encoder")
    if kind in ("cross-encoder", "classifier"):
        return _load_classifier(spec, ctx, folder, cross_encoder=kind == "cross-encoder")
    return _load_embedder(spec, ctx, folder, sentence_transformers=kind == "sentence-transformers")


def _common(ctx: LoadContext) -> dict[str, Any]:
    return {"dtype": ctx.torch_dtype(), "trust_remote_code": ctx.trust_remote_code, "token": ctx.token}


def _tokenizer(folder: Path, ctx: LoadContext) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=ctx.trust_remote_code, token=ctx.token)
    except (OSError, ValueError, TypeError) as exc:
        raise UnsupportedModelType(f"This model has no usable tokenizer ({type(exc).__name__}); "
                                   "text endpoints need one.") from exc


def _load_embedder(spec: ModelSpec, ctx: LoadContext, folder: Path, sentence_transformers: bool) -> BaseModel:
    from transformers import AutoConfig, AutoModel

    from models.encoder.embed import EmbeddingModel

    pipeline = read_pipeline(folder) if sentence_transformers else None
    model_dir = pipeline.transformer_dir if pipeline else folder
    config = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=ctx.trust_remote_code, token=ctx.token)
    model = AutoModel.from_pretrained(str(model_dir), config=config, **_common(ctx))
    if getattr(config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
        model = model.get_encoder()  # T5-style: embed with the encoder stack only
    model = model.to(ctx.device).eval()
    tokenizer = _tokenizer(model_dir, ctx)
    limit = max_tokens(model_dir, config, tokenizer, pipeline.max_seq_length if pipeline else None)
    return EmbeddingModel(spec.key, ctx, folder, model, tokenizer, limit,
                          lowercase=pipeline.lowercase if pipeline else False, pipeline=pipeline)


def _load_classifier(spec: ModelSpec, ctx: LoadContext, folder: Path, cross_encoder: bool) -> BaseModel:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from models.encoder.classify import ClassifierModel

    config = AutoConfig.from_pretrained(str(folder), trust_remote_code=ctx.trust_remote_code, token=ctx.token)
    tokenizer = _tokenizer(folder, ctx)
    if getattr(config, "pad_token_id", None) is None:  # decoder-based classifiers need one to batch
        if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
            tokenizer.pad_token = tokenizer.eos_token
        config.pad_token_id = tokenizer.pad_token_id
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), config=config, **_common(ctx))
    model = model.to(ctx.device).eval()
    sbert = read_json(folder / "sentence_bert_config.json") or {}
    configured = sbert.get("max_seq_length") if isinstance(sbert.get("max_seq_length"), int) else None
    limit = max_tokens(folder, config, tokenizer, configured)
    return ClassifierModel(spec.key, ctx, folder, model, tokenizer, limit, cross_encoder=cross_encoder)
