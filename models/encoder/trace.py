"""TorchScript fast path for text encoders: the whole forward pass runs in C++ with the GIL released.

Why: an eager transformers forward re-takes the GIL after each of its few hundred torch ops. While the event
loop runs Python (parsing requests, encoding JSON), each re-take can wait up to the interpreter's switch
interval. Measured on MiniLM with one busy Python thread beside it, a forward of 16 sentences took 12x as
long as alone; the traced forward took 1.5x as long, because a TorchScript call releases the GIL once for
the whole graph.

A trace is taken from a padded example batch, then checked against the eager model on batches of other
shapes (one unpadded row; several rows longer than the example). Any error or mismatch keeps the eager
forward, so a model whose forward depends on its data in ways a trace cannot capture is still served
correctly. `torch.jit.trace` is deprecated in torch 2.x but present in the pinned torch; if a later torch
drops it, the attempt fails and the eager forward stays.

Traced graphs are cached by architecture (model class, config, inputs, device, dtype): `torch.jit.trace`
registers the types of every traced module in a process-wide compilation unit that is never freed
(pytorch/pytorch#35600), about 8 MiB per trace of MiniLM, more for deeper models, so tracing again on every
reload of an evicted encoder would leak that much each time. A cached graph is bound to the weights of the
one model using it and unbound (its tensors emptied) when that model closes: the cache keeps no weights.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("universal_runtime.encoder")

Inputs = dict[str, Any]
PREFIX = "inner."  # where the model sits inside the traced wrapper


def first_output(out: Any) -> Any:
    """The first tensor a transformers model returns: last_hidden_state for encoders, logits for classifiers."""
    return out[0]


def trace_module(model: Any, names: tuple[str, ...], example: Inputs) -> Any:
    """A ScriptModule running `model` on the tensors named `names` (in that order), returning its first output."""
    import torch

    class _Positional(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, *tensors: Any) -> Any:
            return first_output(self.inner(**dict(zip(names, tensors, strict=True))))

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings and the deprecation notice; checked by `mismatch`
        return torch.jit.trace(_Positional().eval(), tuple(example[n] for n in names), strict=False,
                               check_trace=False)


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


def _tensors(module: Any, prefix: str = "") -> dict[str, Any]:
    found = {prefix + n: t for n, t in module.named_parameters()}
    found.update({prefix + n: t for n, t in module.named_buffers()})
    return found


@dataclass(eq=False)
class _Graph:
    """One cached traced module and whether a loaded model is using it."""

    module: Any
    in_use: bool = True


_CACHE: dict[tuple[Any, ...], _Graph] = {}
_LOCK = threading.Lock()


class TracedForward:
    """A traced graph bound to one model's weights. Call it with padded inputs; `release()` when the model
    closes, so the graph (kept for the next model of the same architecture) holds no weights."""

    def __init__(self, graph: _Graph, names: tuple[str, ...]) -> None:
        self.graph = graph
        self.names = names
        self._released = False

    def __call__(self, inputs: Inputs) -> Any:
        return self.graph.module(*(inputs[n] for n in self.names))

    def release(self) -> None:
        import torch

        with _LOCK:
            if self._released:
                return
            self._released = True
            for t in _tensors(self.graph.module).values():
                t.data = torch.empty(0, dtype=t.dtype, device=t.device)
            self.graph.in_use = False


def _bind(graph: _Graph, model: Any) -> str | None:
    """Point a cached graph's tensors at `model`'s (no copy); the reason when they do not fit."""
    mine, theirs = _tensors(graph.module), _tensors(model, PREFIX)
    if mine.keys() != theirs.keys():
        return "the cached trace has other parameters"
    for name, t in mine.items():
        source = theirs[name]
        if source.dtype != t.dtype or source.device != t.device:
            return f"the cached trace has another dtype or device for {name}"
        t.data = source.data
    return None


def architecture(model: Any, names: tuple[str, ...], example: Inputs) -> tuple[Any, ...]:
    """What a traced graph depends on besides the weights."""
    config = getattr(model, "config", None)
    config_json = config.to_json_string() if hasattr(config, "to_json_string") else repr(config)
    weight = next(iter(_tensors(model).values()), None)
    return (type(model).__module__, type(model).__qualname__, config_json, names, str(example[names[0]].device),
            str(weight.dtype) if weight is not None else "")


def build_traced(model: Any, names: tuple[str, ...], example: Inputs,
                 checks: list[Inputs]) -> tuple[TracedForward | None, str]:
    """(traced forward, "torchscript") when a trace of `model` works and matches it on every check batch,
    else (None, the reason). Reuses the cached graph of the same architecture when no other model uses it."""
    import torch

    started = time.perf_counter()
    key = architecture(model, names, example)
    with _LOCK:
        graph = _CACHE.get(key)
        reused = graph is not None and not graph.in_use
        if reused:
            graph.in_use = True  # type: ignore[union-attr]
    problem: str | None = None
    try:
        if reused:
            problem = _bind(graph, model)  # type: ignore[arg-type]
        else:
            graph = _Graph(trace_module(model, names, example))
        forward = TracedForward(graph, names)  # type: ignore[arg-type]
        with torch.inference_mode():
            for inputs in ([] if problem else [example, *checks]):
                problem = mismatch(first_output(model(**inputs)), forward(inputs), inputs.get("attention_mask"))
                if problem:
                    problem = f"trace does not match the model on a batch of shape " \
                              f"{tuple(inputs['input_ids'].shape)}: {problem}"
                    break
    except Exception as exc:  # noqa: BLE001 - any failure keeps the eager forward
        problem = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
    if problem:
        # A fresh graph's tensors are the model's own: it is simply dropped. A reused one is unbound (its
        # tensors are the previous model's objects) and stays cached for the next model of its architecture.
        if reused:
            TracedForward(graph, names).release()  # type: ignore[arg-type]
        return None, problem
    if not reused:
        with _LOCK:
            _CACHE.setdefault(key, graph)  # type: ignore[arg-type]
    logger.info("%s the encoder forward in %.2f s; checked on %d batches",
                "re-bound the cached trace of" if reused else "traced", time.perf_counter() - started,
                len(checks) + 1)
    return forward, "torchscript"
