"""Loading diffusers pipelines: sub-kind from the model's files, load arguments, sibling pipelines for the
other tasks, device placement (fp16, CPU offload, attention slicing, VAE tiling, torch.compile) and the
per-model defaults read from the model's options."""

from __future__ import annotations

import functools
import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.contract import LoadContext
from core.detect import read_json
from core.errors import UnsupportedModelType
from core.load_options import compile_mode
from models.diffusion import schedulers

logger = logging.getLogger("universal_runtime.diffusion")

GENERATE, VARIATION, EDIT = "generate", "variation", "edit"
TEXT2IMG, IMG2IMG, INPAINT = "text-to-image", "image-to-image", "inpainting"
@dataclass
class Defaults:
    """Per-model defaults (from the model's options, else the pipeline's own)."""

    width: int
    height: int
    steps: int
    guidance_scale: float | None = None
    scheduler: str | None = None
    negative_prompt: str | None = None


def _truthy(value: Any) -> bool:
    return value is True or str(value).strip().lower() in ("1", "true", "yes", "on")


def _offload_mode(value: Any) -> str | None:
    """None, "model" (whole components move to the GPU in turn) or "sequential" (layer by layer)."""
    if value is None or value is False:
        return None
    text = str(value).strip().lower()
    if text == "sequential":
        return "sequential"
    return "model" if text == "model" or _truthy(value) else None


def task_class(task: str, class_name: str) -> Any:
    """The diffusers pipeline class for `task` in the family of `class_name` (None if there is none)."""
    from diffusers.pipelines import auto_pipeline as ap

    mapping = {GENERATE: ap.AUTO_TEXT2IMAGE_PIPELINES_MAPPING, VARIATION: ap.AUTO_IMAGE2IMAGE_PIPELINES_MAPPING,
               EDIT: ap.AUTO_INPAINT_PIPELINES_MAPPING}[task]
    try:
        return ap._get_task_class(mapping, class_name, throw_error_if_not_exist=False)
    except Exception:  # noqa: BLE001 - an unknown family just means "not available"
        return None


def pipeline_kind(folder: Path) -> tuple[str, str]:
    """(pipeline class name, sub-kind) read from the folder's model_index.json and UNet config."""
    index = read_json(folder / "model_index.json")
    class_name = str(index.get("_class_name") or "")
    if not class_name:
        raise UnsupportedModelType(f"'{folder.name}' is not a diffusers pipeline (no model_index.json "
                                   "with a _class_name); image endpoints need one.")
    in_channels = read_json(folder / "unet" / "config.json").get("in_channels")
    inpaint_cls = task_class(EDIT, class_name)
    named_inpaint = inpaint_cls is not None and inpaint_cls.__name__ == class_name
    # 9 UNet input channels = an inpainting checkpoint; a 4-channel one saved as an inpainting pipeline
    # can still generate; without a UNet config, the class name decides
    if in_channels == 9 or (in_channels is None and named_inpaint):
        return class_name, INPAINT
    if task_class(GENERATE, class_name) is not None:
        return class_name, TEXT2IMG
    if task_class(VARIATION, class_name) is not None:
        return class_name, IMG2IMG
    raise UnsupportedModelType(f"Pipeline '{class_name}' is not a text-to-image, image-to-image or inpainting "
                               "pipeline that diffusers' auto pipelines can load.")


def _dtype_kwarg() -> str:
    """`dtype` on diffusers versions that renamed `torch_dtype` (which then warns), else `torch_dtype`."""
    from diffusers.pipelines import pipeline_utils

    return "dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype"


def from_pretrained_kwargs(folder: Path, ctx: LoadContext) -> dict[str, Any]:
    index = read_json(folder / "model_index.json")
    kwargs: dict[str, Any] = {_dtype_kwarg(): ctx.torch_dtype(), "local_files_only": True}
    if "safety_checker" in index or "requires_safety_checker" in index:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    if ctx.dtype == "fp16" and any(folder.glob("*/*.fp16.safetensors")):
        kwargs["variant"] = "fp16"
    return kwargs


def _native_size(pipe: Any) -> tuple[int, int]:
    scale = int(getattr(pipe, "vae_scale_factor", 8) or 8)
    sample = getattr(pipe, "default_sample_size", None)
    if sample is None:
        for name in ("unet", "transformer"):
            module = getattr(pipe, name, None)
            if module is not None and module.config.get("sample_size"):
                sample = module.config.get("sample_size")
                break
    if isinstance(sample, list | tuple):
        return int(sample[1]) * scale, int(sample[0]) * scale
    if isinstance(sample, int):
        return sample * scale, sample * scale
    return 512, 512


def _parse_size(value: Any) -> tuple[int, int] | None:
    if not value:
        return None
    w, _, h = str(value).lower().partition("x")
    return int(w), int(h)


def call_params(pipe: Any) -> tuple[frozenset[str], dict[str, Any]]:
    """Names and defaults of the pipeline's __call__ parameters (cached per class)."""
    return _signature_of(type(pipe))


@functools.lru_cache(maxsize=64)
def _signature_of(cls: type) -> tuple[frozenset[str], dict[str, Any]]:
    params = inspect.signature(cls.__call__).parameters
    defaults = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    return frozenset(params), defaults


def derive(base: Any, task: str, class_name: str) -> Any:
    """A pipeline for `task` sharing `base`'s components (None when diffusers has none for this family).

    This is `from_pipe` minus its final `.to(dtype)`: that cast would also convert, in place and for the
    cached pipeline too, the modules a model keeps in float32 under fp16/bf16 (T5's `wo`, for one).
    """
    cls = task_class(task, class_name)
    if cls is None:
        return None
    if isinstance(base, cls):
        return base
    try:
        expected, optional = cls._get_signature_keys(cls)
        components = {k: v for k, v in base.components.items() if k in expected}
        settings = {k: base.config[k] for k in optional if k in base.config}
        sibling = cls(**components, **settings)
        sibling.register_to_config(_name_or_path=base.config.get("_name_or_path"))
        return sibling
    except Exception as exc:  # noqa: BLE001 - the capability is just absent
        logger.info("no %s pipeline for %s: %s", task, class_name, exc)
        return None


def place(pipes: dict[str, Any], ctx: LoadContext) -> None:
    """Device, offload, attention slicing, VAE tiling and compilation from the per-model options."""
    opts = ctx.options
    base = next(iter(pipes.values()))
    offload = _offload_mode(opts.get("cpu_offload"))
    if offload and not ctx.device.startswith("cuda"):
        logger.warning("cpu_offload needs a CUDA device; ignored on %s", ctx.device)
        offload = None
    if offload == "sequential":
        base.enable_sequential_cpu_offload(device=ctx.device)
    elif offload == "model":
        base.enable_model_cpu_offload(device=ctx.device)
        for pipe in pipes.values():
            for attr in ("_all_hooks", "_offload_device", "_offload_gpu_id"):
                if hasattr(base, attr):
                    setattr(pipe, attr, getattr(base, attr))
    else:
        base.to(ctx.device)
    if ctx.device == "mps" or _truthy(opts.get("attention_slicing")):
        base.enable_attention_slicing()
    if _truthy(opts.get("vae_tiling")) and hasattr(base, "enable_vae_tiling"):
        base.enable_vae_tiling()
    mode = compile_mode(opts.get("compile"))
    if mode is not False:
        for name in ("unet", "transformer"):
            module = getattr(base, name, None)
            if module is not None:
                module.compile(mode=mode)
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)


def read_defaults(base: Any, ctx: LoadContext) -> Defaults:
    opts = ctx.options
    _, call_defaults = call_params(base)
    width, height = _parse_size(opts.get("size")) or _native_size(base)
    steps = opts.get("num_inference_steps") or opts.get("steps") or call_defaults.get("num_inference_steps") or 50
    guidance = opts.get("guidance_scale", opts.get("guidance"))
    scheduler = opts.get("scheduler")
    if scheduler is not None:
        name = schedulers.canonical_name(str(scheduler))
        if name is None:
            raise ValueError(f"unknown scheduler '{scheduler}' in the model options")
        scheduler = name
    return Defaults(width=int(opts.get("width") or width), height=int(opts.get("height") or height),
                    steps=int(steps), guidance_scale=None if guidance is None else float(guidance),
                    scheduler=scheduler, negative_prompt=opts.get("negative_prompt"))
