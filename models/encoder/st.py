"""A sentence-transformers folder read without importing sentence-transformers (its import costs 5-20 s).

`modules.json` lists the pipeline: Transformer -> Pooling -> optional Dense / Normalize modules. Pooling
follows `1_Pooling/config.json` (old boolean keys and the newer `pooling_mode`), prompts come from
`config_sentence_transformers.json`, and the maximum length and lower-casing from
`sentence_bert_config.json`. The math mirrors sentence-transformers' own modules, so vectors match
`SentenceTransformer.encode` (tested on the real all-MiniLM-L6-v2).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import UnsupportedModelType
from models.encoder.text import read_json

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
LEGACY_POOLING_KEYS = {  # in sentence-transformers' concatenation order
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
SUPPORTED_MODULES = ("Transformer", "Pooling", "Dense", "Normalize")


@dataclass
class StPipeline:
    """What a sentence-transformers embedding folder asks for."""

    transformer_dir: Path
    pooling: tuple[str, ...] = ("mean",)
    include_prompt: bool = True
    post: list[tuple[str, Path]] = field(default_factory=list)  # ("dense" | "normalize", module folder)
    max_seq_length: int | None = None
    lowercase: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None

    @property
    def normalize(self) -> bool:
        return any(kind == "normalize" for kind, _ in self.post)


def modules_list(folder: Path) -> list[dict[str, Any]]:
    """The entries of modules.json ([] when absent)."""
    data = read_json(folder / "modules.json")
    return [m for m in data if isinstance(m, dict)] if isinstance(data, list) else []


def module_kind(entry: dict[str, Any]) -> str:
    """'Transformer', 'Pooling', ... from a modules.json `type` (old and new sentence-transformers paths)."""
    return str(entry.get("type", "")).rsplit(".", 1)[-1]


def pooling_modes(config: dict[str, Any]) -> tuple[str, ...]:
    """Pooling modes from a Pooling config, new (`pooling_mode`) or legacy (`pooling_mode_*_tokens`) keys."""
    raw = config.get("pooling_mode")
    if raw is None:
        modes = tuple(mode for key, mode in LEGACY_POOLING_KEYS.items() if config.get(key))
        modes = modes or ("mean",)
    else:
        modes = (raw,) if isinstance(raw, str) else tuple(raw)
    unknown = [m for m in modes if m not in POOLING_MODES]
    if unknown:
        raise UnsupportedModelType(f"Unknown pooling mode {unknown[0]!r} in the model's Pooling config.")
    return modes


def read_pipeline(folder: Path) -> StPipeline:
    """Parse a sentence-transformers embedding folder; unsupported modules are a 400."""
    modules = sorted(modules_list(folder), key=lambda m: int(m.get("idx", 0)))
    kinds = [module_kind(m) for m in modules]
    odd = [k for k in kinds if k not in SUPPORTED_MODULES]
    if odd or not kinds or kinds[0] != "Transformer" or "Pooling" not in kinds:
        raise UnsupportedModelType(
            f"This sentence-transformers model uses modules {kinds}; the runtime embeds with Transformer + "
            f"Pooling (+ Dense / Normalize) pipelines{f' and cannot run {odd[0]!r}' if odd else ''}.")
    transformer_dir = folder / str(modules[0].get("path") or "")
    pipeline = StPipeline(transformer_dir=transformer_dir)
    sbert = read_json(transformer_dir / "sentence_bert_config.json") or {}
    if isinstance(sbert.get("max_seq_length"), int):
        pipeline.max_seq_length = sbert["max_seq_length"]
    pipeline.lowercase = bool(sbert.get("do_lower_case", False))
    for entry, kind in zip(modules[1:], kinds[1:], strict=True):
        path = folder / str(entry.get("path") or "")
        if kind == "Pooling":
            config = read_json(path / "config.json") or {}
            pipeline.pooling = pooling_modes(config)
            pipeline.include_prompt = bool(config.get("include_prompt", True))
        elif kind == "Dense":
            pipeline.post.append(("dense", path))
        elif kind == "Normalize":
            pipeline.post.append(("normalize", path))
    st_config = read_json(folder / "config_sentence_transformers.json") or {}
    prompts = st_config.get("prompts") or {}
    pipeline.prompts = {str(k): str(v or "") for k, v in prompts.items()} if isinstance(prompts, dict) else {}
    name = st_config.get("default_prompt_name")
    pipeline.default_prompt_name = str(name) if name and str(name) in pipeline.prompts else None
    return pipeline


def load_dense(path: Path, dtype: Any, device: str) -> Any:
    """A sentence-transformers Dense module as a torch Sequential(Linear, activation)."""
    import torch

    config = read_json(path / "config.json") or {}
    linear = torch.nn.Linear(int(config["in_features"]), int(config["out_features"]),
                             bias=bool(config.get("bias", True)))
    if (path / "model.safetensors").exists():
        from safetensors.torch import load_file

        state = load_file(str(path / "model.safetensors"))
    else:
        state = torch.load(str(path / "pytorch_model.bin"), map_location="cpu", weights_only=True)
    linear.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
    return torch.nn.Sequential(linear, _activation(config.get("activation_function"))).to(device, dtype).eval()


def _activation(name: Any) -> Any:
    import torch

    if not name:
        return torch.nn.Tanh()  # sentence-transformers' default
    module_name, _, attr = str(name).rpartition(".")
    if not module_name.startswith("torch."):
        raise UnsupportedModelType(f"The Dense module's activation {name!r} is not a torch.nn activation.")
    cls = getattr(importlib.import_module(module_name), attr, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise UnsupportedModelType(f"The Dense module's activation {name!r} is not a torch.nn module.")
    return cls()


def pool(tokens: Any, mask: Any, modes: tuple[str, ...], prompt_lengths: list[int] | None = None) -> Any:
    """Pool token embeddings (batch, seq, dim) under an attention mask, as sentence-transformers does.

    `prompt_lengths` (per row) excludes prompt tokens from pooling (Pooling `include_prompt: false`).
    """
    import torch

    original = mask
    if prompt_lengths and any(prompt_lengths):
        first = mask.to(torch.int32).argmax(dim=1)
        positions = torch.arange(mask.size(1), device=mask.device).unsqueeze(0)
        lengths = torch.tensor(prompt_lengths, device=mask.device).unsqueeze(1)
        inside = (positions >= first.unsqueeze(1)) & (positions < first.unsqueeze(1) + lengths)
        mask = mask.masked_fill(inside, 0)
    out = []
    for mode in modes:
        if mode == "cls":
            first = mask.to(torch.int32).argmax(dim=1)
            out.append(tokens[torch.arange(tokens.size(0)), first])
        elif mode == "max":
            out.append(tokens.masked_fill(mask.unsqueeze(-1) == 0, float("-inf")).max(dim=1).values)
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            m = mask.unsqueeze(-1).to(tokens.dtype)
            total = (tokens * m).sum(dim=1)
            count = torch.clamp(m.sum(dim=1), min=1e-9)
            out.append(total / (count if mode == "mean" else torch.sqrt(count)))
        elif mode == "weightedmean":
            m = mask.unsqueeze(-1).to(tokens.dtype)
            weights = torch.arange(1, tokens.size(1) + 1, device=tokens.device, dtype=tokens.dtype).view(1, -1, 1)
            weights = weights - original.to(torch.int32).argmax(dim=1).view(-1, 1, 1)
            weighted = m * weights
            out.append((tokens * weighted).sum(dim=1) / torch.clamp(weighted.sum(dim=1), min=1e-9))
        elif mode == "lasttoken":
            seq_len = mask.size(1)
            values, indices = mask.flip(1).max(1)
            indices = torch.where(values == 0, seq_len - 1, indices)
            last = seq_len - indices - 1
            out.append((tokens * mask.unsqueeze(-1).to(tokens.dtype))[torch.arange(tokens.size(0)), last])
    return torch.cat(out, dim=-1)
