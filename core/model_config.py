"""The model config file (`--config FILE` / `UNIVERSAL_RUNTIME_CONFIG`): aliases and per-model options.

Two formats are accepted (docs/configuration.md):

- the runtime's own: a top-level `models:` mapping of alias (or model id) -> options;
- a LlamaFarm project file (`llamafarm.yaml`, recognised by its top-level `runtime:`): entries of
  `runtime.models` with `provider: universal` become aliases `name -> model`; their `transformers:` and
  `diffusion:` blocks become options and `keep_loaded` pins.

Errors name the dotted path and the line: `config error: models.my-llm.dtype (line 7): Input should be ...`.
"""

from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.load_options import (
    Category,
    Device,
    Dtype,
    Guidance,
    LoadOptions,
    Quantization,
    Steps,
    dtype_name,
    size_text,
)
from core.resolve import ModelOptions

logger = logging.getLogger("universal_runtime.config")

# LlamaFarm's `transformers.model_type` values -> the runtime's categories.
LLAMAFARM_TYPES: dict[str, str] = {
    **dict.fromkeys(("text", "causal", "llm", "chat", "language", "text-generation"), "causal"),
    **dict.fromkeys(("embedding", "embeddings", "encoder", "classification", "reranking", "reranker", "ner",
                     "sentence-transformers"), "encoder"),
    **dict.fromkeys(("image", "diffusion", "image-generation", "text-to-image"), "diffusion"),
    **dict.fromkeys(("vision", "image-classification", "clip"), "vision"),
    **dict.fromkeys(("audio", "speech", "stt", "asr", "speech-to-text", "transcription"), "audio"),
    **dict.fromkeys(("multimodal", "captioning", "vqa", "image-to-text"), "multimodal"),
    **dict.fromkeys(("tts", "text-to-speech", "speech-synthesis", "text-to-audio"), "speech"),
}


class ModelConfigError(ValueError):
    """A config file that cannot be used; `str(error)` is the one-line message shown at start-up."""


class ModelEntry(LoadOptions):
    """One entry under `models:`. A bare string is shorthand for `{model: <string>}`."""

    model: str | None = Field(None, min_length=1, description="Model id, folder or GGUF file (default: the key).")
    type: Category | None = None
    device: Device | None = None
    dtype: Dtype | None = None
    quantization: Quantization | None = None
    trust_remote_code: bool | None = None
    pin: bool = False
    preload: bool = False
    description: str | None = None

    @model_validator(mode="before")
    @classmethod
    def shorthand(cls, data: Any) -> Any:
        return {"model": data} if isinstance(data, str) else data

    @field_validator("dtype", mode="before")
    @classmethod
    def check_dtype(cls, v: Any) -> Any:
        return dtype_name(v)


class ConfigFile(BaseModel):
    """The runtime's own format: top-level `version` (optional) and `models`."""

    model_config = ConfigDict(extra="forbid")

    version: int | str | None = None
    models: dict[str, Any] = Field(default_factory=dict)


class LlamaFarmTransformers(BaseModel):
    """A LlamaFarm entry's `transformers:` block."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    device: Device | None = None
    dtype: Dtype | None = None
    trust_remote_code: bool | None = None
    quantization: Quantization | None = None
    model_type: str | None = None

    @field_validator("dtype", mode="before")
    @classmethod
    def check_dtype(cls, v: Any) -> Any:
        return dtype_name(v)

    @field_validator("model_type")
    @classmethod
    def known_type(cls, v: str | None) -> str | None:
        if v is not None and v.lower() not in LLAMAFARM_TYPES:
            raise ValueError(f"unknown model_type '{v}'; use text, embedding, image, vision, audio or multimodal")
        return v.lower() if v else v


class LlamaFarmDiffusion(BaseModel):
    """A LlamaFarm entry's `diffusion:` block."""

    model_config = ConfigDict(extra="forbid")

    default_steps: Steps | None = None
    default_guidance: Guidance | None = None
    default_size: str | None = None
    default_negative_prompt: str | None = None
    scheduler: str | None = Field(None, pattern=r"^[a-z0-9_+\-]+$")
    enable_optimizations: bool | None = None
    cpu_offload: bool | None = None

    @field_validator("default_size")
    @classmethod
    def check_size(cls, v: str | None) -> str | None:
        return size_text(v)


class LlamaFarmEncoder(BaseModel):
    """A LlamaFarm entry's `encoder_config:` block: it marks an encoder (its keys are LlamaFarm's own)."""

    model_config = ConfigDict(extra="ignore")


class LlamaFarmModel(BaseModel):
    """One `runtime.models` entry with `provider: universal` (LlamaFarm's other keys are ignored)."""

    model_config = ConfigDict(extra="ignore")

    name: str | None = Field(None, min_length=1)
    model: str = Field(min_length=1)
    keep_loaded: bool = False
    transformers: LlamaFarmTransformers | None = None
    diffusion: LlamaFarmDiffusion | None = None
    encoder_config: LlamaFarmEncoder | None = None

    def to_options(self, model: str) -> ModelOptions:
        t = self.transformers or LlamaFarmTransformers()
        d = self.diffusion
        extra: dict[str, Any] = {}
        category = LLAMAFARM_TYPES[t.model_type] if t.model_type else None
        if d is not None:
            category = category or "diffusion"
            extra = {k: v for k, v in {
                "steps": d.default_steps, "guidance_scale": d.default_guidance, "size": d.default_size,
                "negative_prompt": d.default_negative_prompt,
                "scheduler": d.scheduler.lower() if d.scheduler else None,
                "attention_slicing": d.enable_optimizations, "cpu_offload": d.cpu_offload}.items() if v is not None}
        if self.encoder_config is not None:
            category = category or "encoder"
        return ModelOptions(model=model, type=category, device=_auto_none(t.device), dtype=_auto_none(t.dtype),
                            quantization=t.quantization, trust_remote_code=t.trust_remote_code,
                            pin=self.keep_loaded, extra=extra)


def _auto_none(value: str | None) -> str | None:
    return None if value in (None, "auto") else value


# ----- reading ---------------------------------------------------------------------------------------


def load_model_config(path: str | os.PathLike[str]) -> dict[str, ModelOptions]:
    """Read a config file; returns alias -> ModelOptions. Raises ModelConfigError (one line) when unusable."""
    file = Path(os.path.expanduser(str(path)))
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelConfigError(f"config error: cannot read {file}: {getattr(exc, 'strerror', None) or exc}") \
            from None
    return parse_model_config(text, base_dir=file.resolve().parent, source=str(file))


def parse_model_config(text: str, base_dir: Path | None = None, source: str = "<config>") -> dict[str, ModelOptions]:
    """Parse config text (either format). Relative model paths are taken relative to `base_dir`."""
    node, data = _compose(text)
    base = base_dir or Path.cwd()
    if data is None:
        logger.warning("config %s is empty: no aliases", source)
        return {}
    if not isinstance(data, dict):
        raise ModelConfigError(f"config error: top level (line {_line(node)}): expected a mapping with 'models:' "
                               "(or a llamafarm.yaml with 'runtime:')")
    reader = _Reader(node, base)
    aliases = reader.llamafarm(data) if "runtime" in data else reader.plain(data)
    logger.info("config %s: %d alias(es): %s", source, len(aliases), ", ".join(aliases) or "-")
    return aliases


def _compose(text: str) -> tuple[yaml.Node | None, Any]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        return node, (loader.construct_document(node) if node is not None else None)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ModelConfigError(f"config error: invalid YAML{where}: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ModelConfigError(f"config error: invalid YAML: {exc}") from None
    finally:
        loader.dispose()


def _line(node: yaml.Node | None) -> int:
    return node.start_mark.line + 1 if node is not None else 1


def _find(node: yaml.Node | None, loc: tuple[Any, ...], key_line: bool = False) -> int:
    """Line of the YAML node at `loc` (the key's line when `key_line`), or of the deepest node found."""
    line = _line(node)
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if str(k.value) == str(part)), None)
            if match is None:
                return line
            line = _line(match[0])
            node = match[1]
            if last and not key_line and not isinstance(node, yaml.CollectionNode):
                line = _line(node)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = _line(node)
        else:
            return line
    return line


class _Reader:
    """Validates the data against the schema, turning the first error into a ModelConfigError."""

    def __init__(self, root: yaml.Node | None, base: Path) -> None:
        self.root = root
        self.base = base

    def fail(self, loc: tuple[Any, ...], message: str, key_line: bool = False) -> ModelConfigError:
        path = ".".join(str(p) for p in loc) or "top level"
        return ModelConfigError(f"config error: {path} (line {_find(self.root, loc, key_line)}): {message}")

    def validate(self, cls: type[BaseModel], data: Any, prefix: tuple[Any, ...]) -> Any:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = prefix + tuple(err["loc"])
            if err["type"] == "extra_forbidden":
                known = [n for n in _fields(cls, err["loc"][:-1])]
                hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
                extra = f"; did you mean '{hint[0]}'?" if hint else f"; known keys: {', '.join(known)}"
                raise self.fail(loc, f"unknown key '{loc[-1]}'{extra}", key_line=True) from None
            if err["type"] == "missing":
                raise self.fail(loc[:-1], f"missing required key '{loc[-1]}'", key_line=True) from None
            msg = str(err["msg"]).removeprefix("Value error, ")
            raise self.fail(loc, msg) from None

    def model_path(self, value: str) -> str:
        if value == "." or value.startswith(("./", "../")):
            return str((self.base / value).resolve())
        return os.path.expanduser(value) if value.startswith("~") else value

    def plain(self, data: dict[str, Any]) -> dict[str, ModelOptions]:
        self.check_duplicates(("models",))
        top = self.validate(ConfigFile, data, ())
        aliases: dict[str, ModelOptions] = {}
        for name, raw in top.models.items():
            entry: ModelEntry = self.validate(ModelEntry, raw, ("models", name))
            aliases[str(name)] = ModelOptions(
                model=self.model_path(entry.model or str(name)), type=entry.type, device=_auto_none(entry.device),
                dtype=_auto_none(entry.dtype), quantization=entry.quantization,
                trust_remote_code=entry.trust_remote_code, pin=entry.pin, preload=entry.preload, extra=entry.extra())
        return aliases

    def llamafarm(self, data: dict[str, Any]) -> dict[str, ModelOptions]:
        runtime = data.get("runtime") or {}
        if not isinstance(runtime, dict):
            raise self.fail(("runtime",), "expected a mapping")
        models = runtime.get("models")
        if models is None and runtime.get("provider"):  # legacy single-model form
            items: list[tuple[Any, Any]] = [((), runtime)]
        elif isinstance(models, list):
            items = [((i,), m) for i, m in enumerate(models)]
        elif isinstance(models, dict):
            self.check_duplicates(("runtime", "models"))
            items = [((k,), {"name": k, **m} if isinstance(m, dict) else m) for k, m in models.items()]
        elif models is None:
            items = []
        else:
            raise self.fail(("runtime", "models"), "expected a list (or mapping) of models")
        named: dict[str, ModelOptions] = {}
        by_id: dict[str, ModelOptions] = {}
        for sub, raw in items:
            loc = ("runtime", "models", *sub) if sub else ("runtime",)
            if not isinstance(raw, dict):
                raise self.fail(loc, "expected a mapping")
            if str(raw.get("provider", "")).lower() != "universal":
                continue
            entry: LlamaFarmModel = self.validate(LlamaFarmModel, raw, loc)
            opts = entry.to_options(self.model_path(entry.model))
            if entry.name:
                if entry.name in named:
                    raise self.fail((*loc, "name"), f"duplicate model name '{entry.name}'")
                named[entry.name] = opts
            by_id.setdefault(entry.model, opts)  # LlamaFarm sends the model id: its options apply to it too
        return {**named, **{k: v for k, v in by_id.items() if k not in named}}

    def check_duplicates(self, loc: tuple[Any, ...]) -> None:
        node: Any = self.root
        for part in loc:
            if not isinstance(node, yaml.MappingNode):
                return
            node = next((v for k, v in node.value if str(k.value) == part), None)
        if not isinstance(node, yaml.MappingNode):
            return
        seen: set[str] = set()
        for key, _ in node.value:
            if str(key.value) in seen:
                path = ".".join(str(p) for p in (*loc, key.value))
                raise ModelConfigError(f"config error: {path} (line {_line(key)}): duplicate key '{key.value}'")
            seen.add(str(key.value))


def _fields(cls: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the (nested) model at `loc` inside `cls`, for 'unknown key' hints."""
    model: Any = cls
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        annotation = getattr(field, "annotation", None)
        args = getattr(annotation, "__args__", ()) or (annotation,)
        model = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return []
    return list(model.model_fields)
