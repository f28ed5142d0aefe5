"""Overhead: the cheapest real request (one short word embedded by MiniLM) through HTTP vs the direct call.

Ours: `POST /v1/embeddings` on a keep-alive connection (request parsing, queueing, worker thread, JSON
response of 384 floats). Baseline: the same tokenizer + model forward + mean pooling + normalisation called
in this process. Each round is the median of a burst of calls. Target: <= 1.5x, or <= 3 ms added.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from bench.harness import Harness
from bench.tiny import MINILM_ID, DirectEncoder, minilm_path

PHASE = "overhead"
TEXT = "hello"


def burst(fn: Callable[[], object], calls: int) -> float:
    """Median seconds of `calls` consecutive calls of fn."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(h: Harness) -> None:
    calls = 10 if h.quick else 20
    direct = DirectEncoder(minilm_path()).load()
    body = {"model": MINILM_ID, "input": TEXT}
    with h.server() as srv:
        if not srv.has_route("/v1/embeddings"):
            h.skip("tiny embeddings request", "POST /v1/embeddings is not implemented yet")
            return
        srv.post("/v1/embeddings", json=body)  # load the model (not measured here: see the startup phase)
        ours, base = h.interleave(lambda: burst(lambda: srv.post("/v1/embeddings", json=body), calls),
                                  lambda: burst(lambda: direct.embed([TEXT]), calls))
        added = (ours.median - base.median) * 1000
        h.result("tiny request: 1-word embedding, MiniLM (HTTP vs direct)", ours, base, target="<=1.5",
                 added_at_most=0.003, note=f"{added:+.1f} ms added per request; median of {calls} calls a round")
