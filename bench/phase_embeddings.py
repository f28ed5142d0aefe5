"""Embeddings throughput: concurrent single-sentence clients through the server vs direct batched encode.

Ours: C client threads (C = 1, 4, 16), each with its own keep-alive connection, send the benchmark's
sentences one per request to `POST /v1/embeddings` (MiniLM); the server's micro-batcher gathers concurrent
requests into shared forward passes. The load generator uses the standard library's `http.client`, not httpx:
it shares the machine's two cores with the server, and httpx spends about 3 ms of CPU per request from 16
threads against 0.6 ms for `http.client`, CPU the server would otherwise have had. Each response is still
parsed and its vector length checked. Baseline: `SentenceTransformer.encode` of the 64 sentences in batches
of 32, in this process, with the same torch thread count. Each measurement is sentences per second (one
client sends the first 32 sentences, four clients the first 64, sixteen clients all 128: eight requests per
client, so the ramp-up and the last partial batch weigh little against steady state).

Targets: 16 clients >= 0.7x the direct batched encode; 16 clients >= 3x one client (batching works).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from bench.harness import Harness, run_threads
from bench.tiny import MINILM_ID, minilm_path

PHASE = "embeddings"
SUBJECTS = ["The cat", "A small dog", "My neighbour", "The old sailor", "A student", "The river", "Our team",
            "The train"]
ACTIONS = ["sat quietly on the mat", "walked to the market this morning", "is reading a long book about history",
           "watched the rain fall over the city", "found a key under the table", "likes warm bread with butter",
           "was late for the meeting again", "sings when nobody is listening"]


def sentences(n: int) -> list[str]:
    """n distinct everyday sentences of 4 to 12 words."""
    return [f"{SUBJECTS[i % len(SUBJECTS)]} {ACTIONS[(i // len(SUBJECTS) + i) % len(ACTIONS)]}." for i in range(n)]


def clients_rate(url: str, texts: list[str], clients: int) -> float:
    """Sentences per second when `clients` threads each send one sentence per request until all are done."""
    lock = threading.Lock()
    next_index = [0]
    errors: list[str] = []
    parts = urlsplit(url)
    connections = [http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=120.0)
                   for _ in range(clients)]
    headers = {"Content-Type": "application/json"}

    def call(conn: http.client.HTTPConnection, method: str, path: str, body: str | None = None) -> tuple[int, bytes]:
        conn.request(method, path, body, headers)
        response = conn.getresponse()
        return response.status, response.read()

    def worker(conn: http.client.HTTPConnection) -> None:
        while True:
            with lock:
                i = next_index[0]
                next_index[0] += 1
            if i >= len(texts) or errors:
                return
            status, raw = call(conn, "POST", "/v1/embeddings", json.dumps({"model": MINILM_ID, "input": texts[i]}))
            if status != 200 or len(json.loads(raw)["data"][0]["embedding"]) != 384:
                errors.append(f"{status}: {raw[:200]!r}")

    try:
        for conn in connections:  # open the connections before timing
            call(conn, "GET", "/health")
        elapsed = run_threads(worker, connections)
    finally:
        for conn in connections:
            conn.close()
    if errors:
        raise RuntimeError(f"embedding request failed: {errors[0]}")
    return len(texts) / elapsed


def direct_rate(encode: Callable[[list[str]], object], texts: list[str]) -> float:
    start = time.perf_counter()
    encode(texts)
    return len(texts) / (time.perf_counter() - start)


def run(h: Harness) -> None:
    h.apply_threads()
    from sentence_transformers import SentenceTransformer

    texts = sentences(64 if h.quick else 128)
    share = {1: len(texts) // 4, 4: len(texts) // 2, 16: len(texts)}
    st = SentenceTransformer(str(minilm_path()), device="cpu")

    def baseline() -> float:
        return direct_rate(lambda t: st.encode(t, batch_size=32, convert_to_numpy=True), texts)

    with h.server() as srv:
        if not srv.has_route("/v1/embeddings"):
            h.skip("embeddings throughput", "POST /v1/embeddings is not implemented yet")
            return
        srv.post("/v1/embeddings", json={"model": MINILM_ID, "input": "load the model"})
        rates = {}
        for clients in (1, 4, 16):
            ours, base = h.interleave(lambda c=clients: clients_rate(srv.url, texts[:share[c]], c), baseline)
            rates[clients] = ours
            h.result(f"{clients} concurrent single-sentence clients vs direct encode (batch 32)", ours, base,
                     unit="sentences/s", higher_is_better=True, target=">=0.7" if clients == 16 else None,
                     note=f"{share[clients]} requests a round vs {len(texts)} sentences encoded directly, MiniLM")
        h.result("16 clients vs 1 client (micro-batching gain)", rates[16], rates[1], unit="sentences/s",
                 higher_is_better=True, target=">=3", note="both through the server, from the rounds above")
