"""Diffusion pipelines (category "diffusion"): text-to-image generations, image-to-image variations and
inpainting edits.

The sub-kind comes from the model's own files: `model_index.json` `_class_name` (looked up in diffusers'
auto-pipeline tables) and the UNet's `in_channels` (9 = an inpainting checkpoint). A text-to-image model
serves variations and edits through sibling pipelines built from its components (`from_pipe`
without its dtype cast: the same weights, loaded once).
Every request runs on a shallow copy of the cached pipeline with its own scheduler instance, so a
per-request scheduler (or any state the call writes) never reaches later requests. The safety checker is
off (`safety_checker=None`): this is a local runtime, and filtering is the operator's choice.
"""

from __future__ import annotations

import copy
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.contract import BaseModel, LoadContext, module_bytes
from core.errors import InvalidRequest
from core.logs import request_id_var
from models.diffusion import schedulers
from models.diffusion.loading import (
    EDIT,
    GENERATE,
    IMG2IMG,
    INPAINT,
    TEXT2IMG,
    VARIATION,
    Defaults,
    call_params,
    derive,
    from_pretrained_kwargs,
    pipeline_kind,
    place,
    read_defaults,
    task_class,
)

logger = logging.getLogger("universal_runtime.diffusion")

PROGRESS_EVERY_S = 1.0


class GenerationCancelled(Exception):
    """The client went away; the generation stopped at a step boundary."""


@dataclass
class ImageJob:
    """One images request, already validated by the router (PIL images, sizes in pixels)."""

    prompt: str
    n: int = 1
    width: int | None = None
    height: int | None = None
    negative_prompt: str | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    scheduler: str | None = None  # canonical API name
    strength: float | None = None
    image: Any = None  # PIL.Image (RGB)
    mask: Any = None  # PIL.Image (L), white = repaint


@dataclass
class ImageResult:
    """Images (PIL) and what the pipeline could not honour."""

    images: list[Any]
    seeds: list[int]
    ignored: list[str] = field(default_factory=list)


class DiffusionModel(BaseModel):
    """A loaded diffusers pipeline plus the `from_pipe` siblings it can serve edits and variations with."""

    category = "diffusion"

    def __init__(self, model_id: str, ctx: LoadContext, pipes: dict[str, Any], kind: str, class_name: str,
                 defaults: Defaults) -> None:
        super().__init__(model_id, ctx)
        self.pipes = pipes
        self.kind = kind
        self.class_name = class_name
        self.defaults = defaults
        self.capabilities = frozenset(pipes)  # type: ignore[misc]
        self._schedulers: dict[tuple[int, str | None], Any] = {}
        gen_device = ctx.device if ctx.device.startswith("cuda") else "cpu"
        self.generator_device = gen_device

    # ----- requests ---------------------------------------------------------------------------------
    def generate(self, job: ImageJob, cancel: threading.Event | None = None) -> ImageResult:
        """Text to image."""
        return self._run(GENERATE, job, cancel)

    def edit(self, job: ImageJob, cancel: threading.Event | None = None) -> ImageResult:
        """Inpainting: repaint where the mask is white."""
        return self._run(EDIT, job, cancel)

    def variation(self, job: ImageJob, cancel: threading.Event | None = None) -> ImageResult:
        """Image to image (an inpainting checkpoint repaints the whole image from the noised input)."""
        if self.kind == INPAINT:
            from PIL import Image

            job.mask = Image.new("L", job.image.size, 255)
            return self._run(EDIT, job, cancel)
        return self._run(VARIATION, job, cancel)

    def _run(self, task: str, job: ImageJob, cancel: threading.Event | None) -> ImageResult:
        cancel = cancel or threading.Event()
        if cancel.is_set():
            raise GenerationCancelled()
        base = self.pipes[task]
        pipe = copy.copy(base)  # per-request view: scheduler and call state stay off the cached pipeline
        pipe.scheduler = self._scheduler_for(base, job.scheduler or self.defaults.scheduler)
        kwargs, ignored, seeds = self._kwargs(pipe, task, job, cancel)
        rid = request_id_var.get()
        started = time.perf_counter()
        logger.info("request %s: %s, %d image(s) %dx%d, %d steps, %s", rid, task, job.n,
                    job.width or self.defaults.width, job.height or self.defaults.height,
                    kwargs["num_inference_steps"], type(pipe.scheduler).__name__)
        try:
            output = pipe(**kwargs)
        except GenerationCancelled:
            logger.info("request %s: client disconnected; generation stopped", rid)
            raise
        finally:
            if hasattr(pipe, "_all_hooks"):  # CPU offload re-installs its hooks after each call
                base._all_hooks = pipe._all_hooks
        logger.info("request %s: done in %.2fs", rid, time.perf_counter() - started)
        return ImageResult(images=list(output.images), seeds=seeds, ignored=ignored)

    def _scheduler_for(self, base: Any, name: str | None) -> Any:
        """A scheduler only this request uses: a deep copy of a prototype built once per (pipeline, name)."""
        key = (id(base), name)
        proto = self._schedulers.get(key)
        if proto is None:
            try:
                proto = schedulers.build_scheduler(name, base.scheduler) if name else base.scheduler
            except (ValueError, AttributeError, ImportError) as exc:
                usable = ", ".join(schedulers.names_for(base.scheduler))
                raise InvalidRequest(f"Scheduler '{name}' cannot be used with this model ({exc}); "
                                     f"usable: {usable}.", param="scheduler") from exc
            self._schedulers[key] = proto
        return copy.deepcopy(proto)

    def _kwargs(self, pipe: Any, task: str, job: ImageJob,
                cancel: threading.Event) -> tuple[dict[str, Any], list[str], list[int]]:
        import torch

        params, call_defaults = call_params(pipe)
        d = self.defaults
        width, height = job.width or d.width, job.height or d.height
        steps = job.steps or d.steps
        base_seed = job.seed if job.seed is not None else secrets.randbits(63)
        seeds = [(base_seed + i) % 2**64 for i in range(job.n)]
        generators = [torch.Generator(self.generator_device).manual_seed(s) for s in seeds]
        kwargs: dict[str, Any] = {"prompt": job.prompt, "num_inference_steps": steps, "generator": generators,
                                  "num_images_per_prompt": job.n, "output_type": "pil"}
        ignored: list[str] = []
        for name, asked, default in (("negative_prompt", job.negative_prompt, d.negative_prompt),
                                     ("guidance_scale", job.guidance_scale, d.guidance_scale)):
            value = asked if asked not in (None, "") else default
            if value in (None, ""):
                continue
            if name in params:
                kwargs[name] = value
            elif asked not in (None, ""):
                ignored.append(name)
        if "height" in params and "width" in params:
            kwargs.update(width=width, height=height)
        if job.image is not None:
            kwargs["image"] = job.image.convert("RGB").resize((width, height), _lanczos())
        if job.mask is not None:
            kwargs["mask_image"] = job.mask.convert("L").resize((width, height), _bilinear())
        if task != GENERATE and "strength" in params:
            strength = job.strength if job.strength is not None else call_defaults.get("strength", 1.0)
            kwargs["strength"] = min_one_step(float(strength), steps)
        elif job.strength is not None:
            ignored.append("strength")
        if "callback_on_step_end" in params:
            kwargs["callback_on_step_end"] = _progress_callback(cancel, steps)
        return kwargs, ignored, seeds

    # ----- bookkeeping ------------------------------------------------------------------------------
    def memory_bytes(self) -> int:
        import torch

        base = next(iter(self.pipes.values()))
        modules = [m for m in base.components.values() if isinstance(m, torch.nn.Module)]
        return module_bytes(*modules)

    def describe(self) -> dict[str, Any]:
        d = self.defaults
        return {"pipeline": self.class_name, "kind": self.kind, "native_size": f"{d.width}x{d.height}",
                "capabilities": sorted(self.capabilities)}

    def close(self) -> None:
        self.pipes = {}
        self._schedulers = {}
        super().close()


def min_one_step(strength: float, steps: int) -> float:
    """`strength`, raised just enough that int(steps * strength) >= 1 (one denoising step always runs)."""
    strength = max(0.0, min(1.0, strength))
    if int(steps * strength) >= 1:
        return strength
    return min(1.0, 1.0 / steps + 1e-6)


def _lanczos() -> Any:
    from PIL import Image

    return Image.Resampling.LANCZOS


def _bilinear() -> Any:
    from PIL import Image

    return Image.Resampling.BILINEAR


def _progress_callback(cancel: threading.Event, steps: int) -> Any:
    """A step-end callback: logs step i/N (at most once a second, and the last), stops when cancelled."""
    rid = request_id_var.get()
    last = [0.0]

    def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        total = int(getattr(pipe, "_num_timesteps", 0) or steps)
        now = time.monotonic()
        if step + 1 >= total or now - last[0] >= PROGRESS_EVERY_S:
            last[0] = now
            logger.info("request %s: step %d/%d", rid, step + 1, total)
        else:
            logger.debug("request %s: step %d/%d", rid, step + 1, total)
        if cancel.is_set():
            raise GenerationCancelled()
        return tensors

    return on_step_end


def load(spec: Any, ctx: LoadContext) -> DiffusionModel:
    """Load a diffusers pipeline folder and the sibling pipelines it can serve."""
    import os

    from diffusers.utils import logging as diffusers_logging

    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "").lower() in ("1", "true", "yes"):
        diffusers_logging.disable_progress_bar()
    folder = Path(spec.path)
    class_name, kind = pipeline_kind(folder)
    main_task = {TEXT2IMG: GENERATE, IMG2IMG: VARIATION, INPAINT: EDIT}[kind]
    cls = task_class(main_task, class_name)
    ctx.progress(f"loading {cls.__name__} ({kind}) on {ctx.device} as {ctx.dtype}")
    base = cls.from_pretrained(str(folder), **from_pretrained_kwargs(folder, ctx))
    pipes: dict[str, Any] = {main_task: base}
    if kind == INPAINT:
        pipes[VARIATION] = base  # served by inpainting with an all-white mask
    else:
        for task in (GENERATE, VARIATION, EDIT):
            if task not in pipes and (pipe := derive(base, task, class_name)) is not None:
                pipes[task] = pipe
    defaults = read_defaults(base, ctx)
    place(pipes, ctx)
    return DiffusionModel(spec.key, ctx, pipes, kind, class_name, defaults)
