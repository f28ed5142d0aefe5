"""Scheduler names of the images API and how to build one for a single request.

The name table is plain data (no diffusers import) so the router can refuse an unknown name before any
model loads. `build_scheduler` makes a fresh scheduler from the cached pipeline's scheduler config; the
cached pipeline itself is never changed.
"""

from __future__ import annotations

from typing import Any

# API name -> (diffusers class name, config overrides)
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "lms": ("LMSDiscreteScheduler", {}),
    "lms_karras": ("LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_karras": ("EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {}),
    "dpm++_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "dpm++_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "dpm++_sde_karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++",
                                                         "use_karras_sigmas": True}),
    "dpm_single": ("DPMSolverSinglestepScheduler", {}),
    "kdpm2": ("KDPM2DiscreteScheduler", {}),
    "kdpm2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "deis": ("DEISMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}),
    "tcd": ("TCDScheduler", {}),
    "flow_euler": ("FlowMatchEulerDiscreteScheduler", {}),
}

ALIASES = {
    "dpmpp": "dpm++", "dpm++_2m": "dpm++", "dpmpp_2m": "dpm++", "dpm++_2m_karras": "dpm++_karras",
    "dpmpp_karras": "dpm++_karras", "dpmpp_2m_karras": "dpm++_karras", "dpmpp_sde": "dpm++_sde",
    "dpm++_2m_sde": "dpm++_sde", "dpmpp_2m_sde": "dpm++_sde", "euler_ancestral": "euler_a",
    "k_euler": "euler", "k_euler_a": "euler_a", "k_lms": "lms", "k_heun": "heun", "k_dpm_2": "kdpm2",
    "k_dpm_2_a": "kdpm2_a", "unipc_multistep": "unipc", "flow_match_euler": "flow_euler",
}

# Schedulers for epsilon / v-prediction models on the same noise schedule; LCM and TCD sample those too.
_NOISE_FAMILY = {
    "DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
    "UniPCMultistepScheduler", "DEISMultistepScheduler", "LCMScheduler", "TCDScheduler", "EDMEulerScheduler",
}


def canonical_name(name: str) -> str | None:
    """The API name for `name` (case, dashes and aliases forgiven), or None when unknown."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    key = ALIASES.get(key, key)
    return key if key in SCHEDULERS else None


def known_names() -> list[str]:
    return sorted(SCHEDULERS)


def compatible(base: Any, class_name: str) -> bool:
    """Whether a scheduler class can replace `base` (a scheduler instance) for this pipeline."""
    base_name = type(base).__name__
    if class_name == base_name:
        return True
    if base_name in _NOISE_FAMILY and class_name in _NOISE_FAMILY:
        return True
    return class_name in {c.__name__ for c in getattr(base, "compatibles", [])}


def build_scheduler(name: str, base: Any) -> Any:
    """A new scheduler of API name `name`, configured from `base`'s config. ValueError if incompatible."""
    import diffusers

    class_name, overrides = SCHEDULERS[name]
    if not compatible(base, class_name):
        raise ValueError(f"scheduler '{name}' ({class_name}) does not fit this model's "
                         f"{type(base).__name__}")
    cls = getattr(diffusers, class_name)
    return cls.from_config(base.config, **overrides)


def names_for(base: Any) -> list[str]:
    """API names usable with this pipeline's scheduler (for error messages)."""
    return [n for n, (cls, _) in sorted(SCHEDULERS.items()) if compatible(base, cls)]
