"""What a load needs besides the model's files (device, dtype, options, trust and the hub token, from the
runtime settings and the model's options), and the building of a model in the loading thread."""

from __future__ import annotations

import fnmatch
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from core.contract import BaseModel, LoadContext
from core.device import DevicePolicy
from core.registry import Loader, check_category
from core.resolve import ModelSpec

logger = logging.getLogger("universal_runtime.manager")


def env_token() -> str | None:
    """The Hugging Face token from the environment (HF_TOKEN or HUGGING_FACE_HUB_TOKEN)."""
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")


def trusts_remote_code(settings: Any, spec: ModelSpec) -> bool:
    """Custom model code only when the operator allowed it: globally, per model option, or by pattern."""
    opts = spec.options
    return bool(settings.trust_remote_code or (opts and opts.trust_remote_code) or any(
        fnmatch.fnmatchcase(name, p) for p in settings.trust_remote_code_models for name in (spec.key, spec.requested)))


def build_context(settings: Any, device: DevicePolicy, spec: ModelSpec, token: str | None,
                  progress: Callable[[str], None]) -> LoadContext:
    """The LoadContext of one load: per-model options over the runtime settings."""
    opts = spec.options
    chosen = device.resolve(opts.device if opts and opts.device else None)
    asked = opts.dtype if opts and opts.dtype else None
    dtype = device.dtype_for(chosen, asked)
    extra: dict[str, Any] = dict(opts.extra) if opts else {}
    extra.setdefault("quantization", (opts.quantization if opts and opts.quantization else None)
                     or settings.quantization)
    extra.setdefault("trace", settings.trace_encoders)
    return LoadContext(device=chosen, dtype=dtype, auto_dtype=(asked or settings.dtype) == "auto",
                       torch_threads=settings.torch_threads, trust_remote_code=trusts_remote_code(settings, spec),
                       options=extra, token=token or env_token(), progress=progress)


def build_model(spec: ModelSpec, ctx: LoadContext, loader: Loader, lock: threading.Lock) -> BaseModel:
    """Download what is missing (reporting it), then build the model under `lock` (loading thread)."""
    download = spec.path is None and spec.hub_id is not None
    if download:
        ctx.progress(f"downloading {spec.hub_id}{'/' + spec.gguf_file if spec.gguf_file else ''}")
    spec = spec.materialize(ctx.token)
    if download:
        ctx.progress(f"downloaded {spec.hub_id}")
        check_category(spec)  # its files are here now
    with lock:
        # a GGUF's device and dtype depend on the engine the loader picks: the loader reports them
        ctx.progress(f"loading weights from GGUF {spec.gguf_file}" if spec.gguf_file
                     else f"loading weights on {ctx.device} ({ctx.dtype})")
        return loader(spec, ctx)


def progress_reporter(name: str, listeners: Callable[[], list[Callable[[str, float], None]]],
                      started: float) -> Callable[[str], None]:
    """The LoadContext.progress of one load: logs `[model] message (elapsed)` and tells the listeners."""

    def report(message: str) -> None:
        elapsed = time.perf_counter() - started
        logger.info("[%s] %s (%.1fs)", name, message, elapsed)
        for listener in listeners():
            try:
                listener(message, elapsed)
            except Exception:  # noqa: BLE001 - a listener must never break a load
                logger.debug("progress listener failed", exc_info=True)

    return report
