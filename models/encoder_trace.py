"""TorchScript fast path for text encoders: the whole forward pass runs in C++ with the GIL released.

Why: an eager transformers forward re-takes the GIL after each of its few hundred torch ops. While the event
loop runs Python (parsing requests, encoding JSON), each re-take can wait up to the interpreter's switch
interval. Measured on MiniLM with one busy Python thread beside it, a forward of 16 sentences took 12x as
long as alone; the traced forward took 1.5x as long, because a TorchScript call releases the GIL once for
the whole graph.

A trace is taken once per model, from a padded example batch, then checked against the eager model on
batches of other shapes (one unpadded row; several rows longer than the example). Any error or mismatch
keeps the eager forward, so a model whose forward depends on its data in ways a trace cannot capture is
still served correctly. `torch.jit.trace` is deprecated in torch 2.x but present in the pinned torch; if a
later torch drops it, the attempt fails and the eager forward stays.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("universal_runtime.encoder")

Inputs = dict[str, Any]


def first_output(out: Any) -> Any:
    """The first tensor a transformers model returns: last_hidden_state for encoders, logits for classifiers."""
    return out[0]


def trace_forward(model: Any, names: tuple[str, ...], example: Inputs) -> Callable[[Inputs], Any]:
    """A traced `model` taking the tensors named `names` (in that order) and returning its first output."""
    import torch

    class _Positional(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, *tensors: Any) -> Any:
            return first_output(self.inner(**dict(zip(names, tensors, strict=True))))

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings and the deprecation notice; checked by `verify`
        traced = torch.jit.trace(_Positional().eval(), tuple(example[n] for n in names), strict=False,
                                 check_trace=False)

    def forward(inputs: Inputs) -> Any:
        return traced(*(inputs[n] for n in names))

    return forward


def mismatch(eager: Any, traced: Any, mask: Any) -> str | None:
    """Why two first outputs differ (None when they agree), comparing only unpadded token positions."""
    import torch

    if eager.shape != traced.shape:
        return f"shape {tuple(traced.shape)} instead of {tuple(eager.shape)}"
    a, b = eager.float(), traced.float()
    if a.dim() == 3 and mask is not None and mask.shape == a.shape[:2]:
        keep = mask.bool()
        a, b = a[keep], b[keep]
    tolerance = (1e-4 if eager.dtype == torch.float32 else 2e-2) * max(1.0, float(a.abs().max()))
    worst = float((a - b).abs().max()) if a.numel() else 0.0
    return None if worst <= tolerance else f"differs by {worst:.3g} (tolerance {tolerance:.3g})"


def build_traced(model: Any, names: tuple[str, ...], example: Inputs,
                 checks: list[Inputs]) -> tuple[Callable[[Inputs], Any] | None, str]:
    """(traced forward, "torchscript") when tracing works and matches eager on every check batch, else
    (None, the reason)."""
    import torch

    started = time.perf_counter()
    try:
        forward = trace_forward(model, names, example)
        with torch.inference_mode():
            for inputs in [example, *checks]:
                problem = mismatch(first_output(model(**inputs)), forward(inputs), inputs.get("attention_mask"))
                if problem:
                    return None, f"trace does not match the model on a batch of shape " \
                                 f"{tuple(inputs['input_ids'].shape)}: {problem}"
    except Exception as exc:  # noqa: BLE001 - any failure keeps the eager forward
        return None, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
    logger.info("traced the encoder forward in %.2f s; checked on %d batches", time.perf_counter() - started,
                len(checks) + 1)
    return forward, "torchscript"
