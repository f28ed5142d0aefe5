"""How the transformers engine runs a chat model on a CPU: its dtype and its decode thread's torch threads,
chosen from measurements rather than one blanket rule.

Measured on a 2-core AVX-512-BF16 machine, SmolLM2-135M (de-quantized GGUF), greedy decode with a direct
`generate`: fp32 1 thread 16 tok/s, fp32 2 threads 15, bf16 1 thread 18, bf16 2 threads 25. The tests' tiny
models (a few million parameters) are 10-100x slower with 2 threads than with 1 there, and bf16 buys them
nothing. So a model of `BIG_MODEL` parameters or more gets bf16 when `dtype` is `auto` and the CPU computes
bf16 natively (AVX512-BF16 or AMX), and all physical cores for its decode thread unless the per-model option
`threads` or the torch_threads setting says otherwise; smaller models keep fp32 and the process's threads.
"""

from __future__ import annotations

import threading
from typing import Any

from core.contract import LoadContext
from core.device import physical_cores

BIG_MODEL = 50_000_000  # parameters


def native_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX512-BF16 or AMX), as torch sees it."""
    import torch

    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # an older torch without the probes
        return False


def tune(model: Any, ctx: LoadContext) -> tuple[Any, int | None]:
    """(model, torch threads for its decode thread or None = the process's) on a CPU, by the rule above;
    `ctx.dtype` follows a dtype change (so /v1/models shows it)."""
    if ctx.device != "cpu":
        return model, None
    big = sum(p.numel() for p in model.parameters()) >= BIG_MODEL
    quantized = getattr(model, "is_quantized", False)
    if big and ctx.auto_dtype and ctx.dtype == "fp32" and not quantized and native_bf16():
        import torch

        model = model.to(torch.bfloat16)
        ctx.dtype = "bf16"
    threads = int(ctx.options.get("threads") or ctx.torch_threads or (physical_cores() if big else 0))
    return model, threads or None


def use_threads(n: int) -> None:
    """Give the calling thread `n` torch (OpenMP) threads without changing the count threads started later get.

    torch.set_num_threads sets the caller's OpenMP team size and torch's default for threads that start later;
    a short helper thread puts that default back, which leaves the caller's own team size as set.
    """
    import torch

    default = torch.get_num_threads()
    if n == default:
        return
    torch.set_num_threads(n)
    restore = threading.Thread(target=torch.set_num_threads, args=(default,), name="torch-threads")
    restore.start()
    restore.join()
