"""Cache: evict/reload cycles of two models with capacity 1 (`UNIVERSAL_RUNTIME_MAX_LOADED_MODELS=1`).

Each cycle embeds with MiniLM then with a small BERT encoder (random weights, built in a temp folder), so
every request evicts the other model and reloads its own. Ours: the request's time through the server.
Baseline: loading the same files directly in this process and running the same forward, interleaved
(every other cycle, to save time).
Memory: the server's resident memory (with children) after the last cycle vs after the first one
(target <= +10%: evicted models must really be freed).
"""

from __future__ import annotations

from bench.harness import Harness, Stats, timed
from bench.tiny import MINILM_ID, DirectEncoder, build_small_encoder, minilm_path, release

PHASE = "cache"
TEXT = "hello"


def direct_reload(folder: object) -> float:
    """Seconds to load an encoder directly and embed one text; the model is dropped afterwards."""
    enc = DirectEncoder(folder)  # type: ignore[arg-type]
    elapsed = timed(lambda: enc.load().embed([TEXT]))
    enc.close()
    release()
    return elapsed


def run(h: Harness) -> None:
    cycles = 3 if h.quick else 10
    small = build_small_encoder(h.tmp / "small-bert")
    models = [(MINILM_ID, minilm_path()), (str(small), small)]
    with h.server(env={"UNIVERSAL_RUNTIME_MAX_LOADED_MODELS": "1"}) as srv:
        if not srv.has_route("/v1/embeddings"):
            h.skip("evict/reload cycles", "POST /v1/embeddings is not implemented yet")
            return
        for model_id, folder in models:  # warm-up: imports and file cache on both sides
            srv.post("/v1/embeddings", json={"model": model_id, "input": TEXT})
            direct_reload(folder)
        ours: list[float] = []
        base: list[float] = []
        rss_first = 0
        for cycle in range(cycles):
            for model_id, folder in models:
                ours.append(srv.timed_post("/v1/embeddings", json={"model": model_id, "input": TEXT}))
                if cycle % 2 == 0:  # the baseline every other cycle: interleaved all along, half the time
                    base.append(direct_reload(folder))
            if cycle == 0:
                rss_first = srv.rss()
        rss_last = srv.rss()
        loaded = srv.get("/health").json().get("loaded_models", [])
    note = f"{cycles} cycles x 2 models; {len(loaded)} model(s) loaded at the end (capacity 1)"
    h.result("reload after eviction (MiniLM / small BERT, alternating) vs direct load", Stats.of(ours),
             Stats.of(base), note=note)
    grown = (rss_last - rss_first) / 2**20
    h.result(f"server RSS after {cycles} cycles vs after the first", Stats.of([rss_last]), Stats.of([rss_first]),
             unit="B", target="<=1.10", note=f"{grown:+.0f} MiB")
