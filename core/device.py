"""Device and dtype policy: CUDA > MPS > CPU with overrides; fp16 on accelerators, fp32 on CPU.

torch is imported on first use only, so `import server` stays light.
"""

from __future__ import annotations

import os
import platform
import threading
from functools import cached_property
from typing import Any

import psutil


class DevicePolicy:
    """Chooses the device and dtype for loads and reports device facts for /health."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._threads_set = False

    @cached_property
    def default_device(self) -> str:
        s = self.settings
        if s.force_cpu or s.device == "cpu":
            return "cpu"
        import torch

        if s.device == "cuda":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if s.device == "mps":
            return "mps" if _mps_available(torch) else "cpu"
        if torch.cuda.is_available():
            return "cuda"
        if not s.skip_mps and _mps_available(torch):
            return "mps"
        return "cpu"

    def resolve(self, override: str | None = None) -> str:
        """The device for a load: a per-model override if it is available, else the default."""
        if override and override != "auto" and not self.settings.force_cpu:
            import torch

            if override == "cpu" or (override.startswith("cuda") and torch.cuda.is_available()) or (
                    override == "mps" and _mps_available(torch)):
                return override
        return self.default_device

    def dtype_for(self, device: str, override: str | None = None) -> str:
        """fp32 | fp16 | bf16: the override or setting, else fp16 on CUDA/MPS and fp32 on CPU."""
        choice = override or self.settings.dtype
        if choice in ("fp32", "fp16", "bf16"):
            if device == "cpu" and choice == "fp16":
                return "fp32"  # fp16 matmuls are slow or unsupported on CPU
            return choice
        return "fp16" if device.startswith(("cuda", "mps")) else "fp32"

    def configure_threads(self) -> None:
        """Apply the torch thread setting once (1 thread on <= 2-core machines)."""
        with self._lock:
            if self._threads_set:
                return
            import torch

            torch.set_num_threads(self.settings.effective_threads)
            self._threads_set = True

    def memory_total(self) -> int | None:
        device = self.default_device
        if device.startswith("cuda"):
            import torch

            return int(torch.cuda.get_device_properties(0).total_memory)
        return int(psutil.virtual_memory().total)

    def memory_allocated(self) -> int | None:
        device = self.default_device
        import torch

        if device.startswith("cuda"):
            return int(torch.cuda.memory_allocated())
        if device == "mps":
            return int(torch.mps.current_allocated_memory())
        return int(psutil.Process().memory_info().rss)

    def empty_cache(self) -> None:
        if "torch" not in __import__("sys").modules:
            return
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        elif _mps_available(torch):
            torch.mps.empty_cache()

    def light_info(self) -> dict[str, Any]:
        """The `device` object of /health without importing torch (used until torch is loaded).

        The device type comes from the settings or cheap probes (NVIDIA device files, Apple Silicon)."""
        from importlib.metadata import PackageNotFoundError, version

        s = self.settings
        if s.force_cpu or s.device == "cpu":
            device = "cpu"
        elif s.device in ("cuda", "mps"):
            device = s.device
        elif os.path.exists("/dev/nvidia0") or os.path.exists("/proc/driver/nvidia/version"):
            device = "cuda"
        elif platform.system() == "Darwin" and platform.machine() == "arm64" and not s.skip_mps:
            device = "mps"
        else:
            device = "cpu"
        try:
            torch_version = version("torch")
        except PackageNotFoundError:
            torch_version = None
        return {
            "type": device,
            "device": device,
            "name": platform.processor() or platform.machine() or device,
            "memory_total": int(psutil.virtual_memory().total) if device == "cpu" else None,
            "memory_allocated": int(psutil.Process().memory_info().rss) if device == "cpu" else None,
            "platform": f"{platform.system()} {platform.release()}",
            "python_version": platform.python_version(),
            "torch_version": torch_version,
            "threads": self.settings.effective_threads,
            "cpu_count": os.cpu_count(),
        }

    def info(self) -> dict[str, Any]:
        """The `device` object of /health (imports torch: call it off the request path)."""
        import torch

        device = self.default_device
        if device.startswith("cuda"):
            name = torch.cuda.get_device_name(0)
        elif device == "mps":
            name = "Apple Silicon (MPS)"
        else:
            name = platform.processor() or platform.machine() or "cpu"
        return {
            "type": device,
            "device": device,
            "name": name,
            "memory_total": self.memory_total(),
            "memory_allocated": self.memory_allocated(),
            "platform": f"{platform.system()} {platform.release()}",
            "python_version": platform.python_version(),
            "torch_version": torch.__version__,
            "threads": self.settings.effective_threads,
            "cpu_count": os.cpu_count(),
        }


def _mps_available(torch: Any) -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def physical_cores() -> int:
    """Physical cores of this machine (llama.cpp's default thread count); logical ones when unknown."""
    try:
        import psutil

        return int(psutil.cpu_count(logical=False) or os.cpu_count() or 1)
    except ImportError:
        return os.cpu_count() or 1
