"""What a load needs besides the model's files: device, dtype, options, trust and the hub token, from the
runtime settings and the model's config-file options."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable
from typing import Any

from core.contract import LoadContext
from core.device import DevicePolicy
from core.resolve import ModelSpec


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
    dtype = device.dtype_for(chosen, opts.dtype if opts and opts.dtype else None)
    extra: dict[str, Any] = dict(opts.extra) if opts else {}
    extra.setdefault("quantization", (opts.quantization if opts and opts.quantization else None)
                     or settings.quantization)
    extra.setdefault("trace", settings.trace_encoders)
    return LoadContext(device=chosen, dtype=dtype, trust_remote_code=trusts_remote_code(settings, spec),
                       options=extra, token=token or env_token(), progress=progress)
