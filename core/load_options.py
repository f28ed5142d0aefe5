"""Per-model load options: what the model config file's entries and `POST /v1/models/load`'s `options` may
set, validated once here (docs/configuration.md lists them)."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.resolve import ModelOptions

Category = Literal["causal", "encoder", "diffusion", "vision", "audio", "multimodal", "speech"]
Dtype = Literal["auto", "fp32", "fp16", "bf16"]
Quantization = Literal["none", "8bit", "4bit"]
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
COMPILE_MODES: tuple[str, ...] = get_args(CompileMode)
Device = Annotated[str, Field(pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")]
DTYPE_SYNONYMS = {"float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}
SIZE = re.compile(r"^(\d+)x(\d+)$")


def dtype_name(value: Any) -> Any:
    return DTYPE_SYNONYMS.get(value.lower(), value.lower()) if isinstance(value, str) else value


def compile_mode(value: Any) -> str | None | Literal[False]:
    """The torch.compile mode the `compile` option asks for: False (not compiled), None (torch's default
    mode) or a mode name."""
    if value in (None, False):
        return False
    return value if value in COMPILE_MODES else None


def size_text(value: str | None) -> str | None:
    if value is None:
        return None
    m = SIZE.match(value.strip().lower())
    if not m:
        raise ValueError("size must look like '512x512' (width x height)")
    w, h = int(m[1]), int(m[2])
    if w % 8 or h % 8 or not (64 <= w <= 2048 and 64 <= h <= 2048):
        raise ValueError("width and height must be multiples of 8 between 64 and 2048")
    return f"{w}x{h}"


Steps = Annotated[int, Field(ge=1, le=150)]
Guidance = Annotated[float, Field(ge=0, le=30)]


class LoadOptions(BaseModel):
    """Per-model loader options; they reach the loader as `LoadContext.options` (set keys only).

    Only keys a loader reads are accepted (docs/configuration.md lists them); add a field here when a
    loader learns a new one.
    """

    model_config = ConfigDict(extra="forbid")

    # diffusion (models/diffusion/model.py): defaults a request's own fields override, and pipeline placement
    steps: Steps | None = None
    guidance_scale: Guidance | None = None
    size: str | None = None
    negative_prompt: str | None = None
    scheduler: str | None = Field(None, pattern=r"^[a-z0-9_+\-]+$")
    cpu_offload: bool | Literal["model", "sequential"] | None = None
    attention_slicing: bool | None = None
    vae_tiling: bool | None = None
    # diffusion and causal LMs (models/language/compiled_backend.py): torch.compile, in the load for causal LMs
    compile: bool | CompileMode | None = None
    # causal LMs (models/language/model.py): most sequences decoded together; sampling defaults requests override
    max_batch_size: int | None = Field(None, ge=1, le=1024)
    # causal LMs: the engine (models/language/loader.py), and llama.cpp's context per sequence, sequences
    # decoded together and threads (models/language/llamacpp.py)
    engine: Literal["auto", "llama.cpp", "transformers"] | None = None
    context_size: int | None = Field(None, ge=16, le=1_048_576)
    parallel: int | None = Field(None, ge=1, le=256)
    threads: int | None = Field(None, ge=1, le=1024)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    # text encoders (models/encoder/text.py): the TorchScript fast path (default: the trace_encoders setting)
    trace: bool | None = None

    @field_validator("size")
    @classmethod
    def check_size(cls, v: str | None) -> str | None:
        return size_text(v)

    @field_validator("scheduler", mode="before")
    @classmethod
    def lower_scheduler(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v

    def extra(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump(include=set(LoadOptions.model_fields)).items() if v is not None}


class RequestOptions(LoadOptions):
    """`options` of `POST /v1/models/load`: the loader options plus device, dtype and quantization. They
    apply over the model's config-file options; `trust_remote_code` stays the operator's choice."""

    device: Device | None = None
    dtype: Dtype | None = None
    quantization: Quantization | None = None

    @field_validator("dtype", mode="before")
    @classmethod
    def check_dtype(cls, v: Any) -> Any:
        return dtype_name(v)

    def over(self, base: ModelOptions | None, model: str) -> ModelOptions:
        """`base` (the config file's options for this model, if any) with these options set over it."""
        base = base or ModelOptions(model=model)
        return replace(base, device=self.device or base.device, dtype=self.dtype or base.dtype,
                       quantization=self.quantization or base.quantization, extra={**base.extra, **self.extra()})


def conflict(held: ModelOptions | None, wanted: RequestOptions) -> str | None:
    """What a loaded model's options say against `wanted`'s set keys ("engine 'llama.cpp'"), None if none."""
    held = held or ModelOptions(model="")
    have = {"device": held.device, "dtype": held.dtype, "quantization": held.quantization, **held.extra}
    diff = [f"{k} {'default' if have.get(k) is None else repr(have.get(k))}"
            for k, v in wanted.model_dump(exclude_unset=True).items() if have.get(k) != v]
    return ", ".join(diff) or None
