"""Fault tests with real tiny models: client disconnects, corrupt model folders, load stampedes, eviction under
concurrency, budget overruns, and SIGTERM with requests in flight on a real server process."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.resolve import weight_bytes
from tests.hardening import (  # noqa: F401 - long_prompt_fixture provides `long_prompt`
    LONG,
    assert_envelope,
    chat_body,
    corrupt_copy,
    in_background,
    long_prompt_fixture,
    metric,
    server_process,
    start_uvicorn,
    wait_until,
)

P = "universal_runtime_"



@pytest.fixture(scope="module")
def lm_server(tmp_path_factory: pytest.TempPathFactory, tiny_lm: Any) -> Iterator[Any]:
    """A real server process (JSON logs) with the random tiny LM loaded; the SIGTERM test, last, stops it."""
    with server_process(tmp_path_factory.mktemp("faults-server"), "--log-format", "json",
                        shutdown_timeout=30) as srv:
        assert httpx.post(srv.url + "/v1/chat/completions", json=chat_body(tiny_lm.random_path, 1),
                          timeout=120).status_code == 200
        yield srv


def test_client_disconnect_mid_stream_frees_the_generation(lm_server: Any, tiny_lm: Any, long_prompt: str) -> None:
    """Over a real socket to a separate process (the client does not compete with the server for the GIL)."""
    key = str(tiny_lm.random_path)

    def depth() -> float | None:
        return metric(httpx.get(lm_server.url + "/metrics", timeout=10).text, P + "queue_depth", model=key)

    with httpx.Client(base_url=lm_server.url, timeout=60) as http:
        with http.stream("POST", "/v1/chat/completions",
                         json=chat_body(key, LONG, long_prompt, stream=True)) as stream:
            lines = stream.iter_lines()  # read with next(): leaving a for loop would close the stream already
            frames = 0
            while frames < 4:
                frames += next(lines).startswith("data: {")
            assert depth() == 1  # the stream holds the model while it generates
        closed = time.perf_counter()  # leaving the block closed the connection mid-stream
        assert wait_until(lambda: depth() == 0, timeout=5)
        assert time.perf_counter() - closed < 0.75  # far less than the ~1.5 s the LONG tokens take
        again = http.post("/v1/chat/completions", json=chat_body(key, LONG, long_prompt)).json()
        assert again["usage"]["completion_tokens"] == LONG  # the engine serves the next request in full


def _truncated(src: Path, dest: Path) -> Path:
    return corrupt_copy(src, dest)


def _no_weights(src: Path, dest: Path) -> Path:
    folder = corrupt_copy(src, dest)
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    return folder


def _bad_config(src: Path, dest: Path) -> Path:
    folder = corrupt_copy(src, dest)
    (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hid')
    return folder


@pytest.mark.parametrize("damage", [_truncated, _no_weights, _bad_config])
def test_corrupt_model_folder_fails_cleanly_and_the_server_keeps_serving(client_factory: Any, tiny_lm: Any,
                                                                       tmp_path: Path, damage: Any) -> None:
    c = client_factory()
    broken = damage(tiny_lm.path, tmp_path / "broken")
    for _ in range(2):  # a retry fails the same clean way: no half-loaded entry was left behind
        started = time.perf_counter()
        r = c.post("/v1/chat/completions", json=chat_body(broken, 8))
        assert time.perf_counter() - started < 30
        assert r.status_code in (400, 404, 500), r.text
        body = assert_envelope(r, r.status_code)
        assert body["error"]["param"] == "model" and str(broken) in body["detail"]
        assert body["error"]["code"] in ("model_load_failed", "unsupported_model_type", "model_not_found")
        assert str(broken) not in c.get("/health").json()["loaded_models"]
    ok = c.post("/v1/chat/completions", json=chat_body(tiny_lm.path, 30))
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"].startswith("Hello")


def test_sixteen_concurrent_first_requests_cause_one_load(client_factory: Any, tiny_st_folder: Path) -> None:
    c = client_factory()
    body = {"model": str(tiny_st_folder), "input": "the cat sat on the mat"}
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda _: c.post("/v1/embeddings", json=body), range(16)))
    assert [r.status_code for r in responses] == [200] * 16
    vectors = [r.json()["data"][0]["embedding"] for r in responses]
    assert all(v == vectors[0] for v in vectors)
    text = c.get("/metrics").text
    assert metric(text, P + "model_loads_total") == 1
    assert metric(text, P + "model_load_failures_total") == 0


def test_concurrent_first_requests_for_different_models_all_load(client_factory: Any, tiny_lm: Any,
                                                                 tiny_st_folder: Path, tiny_vit: Path) -> None:
    """Three categories loading at once (what a client warming up sends): loads of different models must not
    interfere (transformers' loading is not thread-safe: it once failed with meta tensors / half imports)."""
    from bench.phase_load import mixed_requests

    c = client_factory()
    plan = mixed_requests(15, str(tiny_lm.path), str(tiny_st_folder), str(tiny_vit))
    with ThreadPoolExecutor(15) as pool:
        responses = list(pool.map(lambda item: c.post(item[1], json=item[2]), plan))
    assert [r.status_code for r in responses] == [200] * 15, [r.text[:200] for r in responses if r.status_code != 200]
    text = c.get("/metrics").text
    assert metric(text, P + "model_loads_total") == 3 and metric(text, P + "model_load_failures_total") == 0


def test_eviction_while_requests_run_never_breaks_them(client_factory: Any, tiny_st_folder: Path,
                                                       tiny_bert_folder: Path) -> None:
    c = client_factory(max_loaded_models=1)
    models = [str(tiny_st_folder), str(tiny_bert_folder)]
    text = "the dog was sitting on the mat"
    reference = {}
    for m in models:  # each model alone first: the vectors every later answer must match
        reference[m] = c.post("/v1/embeddings", json={"model": m, "input": text}).json()["data"][0]["embedding"]
    assert reference[models[0]] != reference[models[1]]

    def worker(i: int) -> list[tuple[str, Any]]:
        out = []
        for j in range(8):
            m = models[(i + j) % 2]
            out.append((m, c.post("/v1/embeddings", json={"model": m, "input": text})))
            time.sleep(0.01 * (i % 3))  # uneven pacing: loads land while the other model runs, idles or closes
        return out

    with ThreadPoolExecutor(4) as pool:
        results = [pair for batch in pool.map(worker, range(4)) for pair in batch]
    assert [r.status_code for _, r in results] == [200] * len(results), [r.text for _, r in results][:3]
    for m, r in results:
        got = r.json()["data"][0]["embedding"]
        assert max(abs(a - b) for a, b in zip(got, reference[m], strict=True)) < 1e-5
    metrics = c.get("/metrics").text
    assert metric(metrics, P + "model_evictions_total") >= 2
    # a model loaded over the cap while the other was busy is unloaded once idle: back to one model
    assert wait_until(lambda: len(c.get("/health").json()["loaded_models"]) == 1, timeout=5)


def test_load_over_the_budget_is_503_and_loaded_models_keep_working(client_factory: Any, tiny_lm: Any,
                                                                    tiny_st_folder: Path) -> None:
    c = client_factory()
    manager = c.app.state.manager
    assert c.post("/v1/embeddings", json={"model": str(tiny_st_folder), "input": "hi"}).status_code == 200
    held = manager.find(str(tiny_st_folder))[0].bytes
    assert weight_bytes(tiny_lm.path) > held
    manager.settings.memory_budget = str(weight_bytes(tiny_lm.path) - 1)  # the LM alone is too big
    r = c.post("/v1/chat/completions", json=chat_body(tiny_lm.path, 8))
    assert_envelope(r, 503, "insufficient_memory")
    assert int(r.headers["Retry-After"]) >= 1
    assert c.post("/v1/embeddings", json={"model": str(tiny_st_folder), "input": "hi"}).status_code == 200
    text = c.get("/metrics").text
    assert metric(text, P + "model_evictions_total") == 0  # not evicted for a load that could never fit
    assert metric(text, P + "model_loads_total") == 1
    assert c.get("/health").json()["loaded_models"] == [str(tiny_st_folder)]


def test_sigterm_with_a_request_in_flight_completes_it_then_exits(lm_server: Any, tiny_lm: Any,
                                                                  long_prompt: str) -> None:
    """A streaming request is running when SIGTERM arrives: it completes, new requests are refused, the
    models unload and the process exits, as the JSON log tells. (Stops the module's server.)"""
    srv = lm_server
    http = httpx.Client(base_url=srv.url, timeout=60)
    assert http.get("/health").status_code == 200  # a kept-alive connection opened before the signal
    body = chat_body(tiny_lm.random_path, LONG, long_prompt, stream=True, stream_options={"include_usage": True})
    frames: list[dict[str, Any]] = []
    started = threading.Event()

    def consume() -> None:
        with httpx.stream("POST", srv.url + "/v1/chat/completions", json=body, timeout=60) as stream:
            for line in stream.iter_lines():
                if line.startswith("data: {"):
                    frames.append(json.loads(line[6:]))
                    started.set()
                elif line == "data: [DONE]":
                    frames.append({"done": True})

    reader, out = in_background(consume)
    assert started.wait(30)
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    try:
        late = http.get("/health")  # the kept-alive connection: answered 503 or closed, never served
        assert_envelope(late, 503, "unavailable")
    except httpx.TransportError:
        pass
    with pytest.raises(httpx.TransportError):
        httpx.get(srv.url + "/health", timeout=5)  # new connections are refused
    reader.join(60)
    assert "error" not in out, out
    assert frames[-1] == {"done": True}
    assert frames[-2]["usage"]["completion_tokens"] == LONG
    assert srv.proc.wait(30) is not None
    http.close()
    log = srv.log_path.read_text()
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]  # ours; not raw C++ prints
    messages = [r["message"] for r in records]
    assert any(m.startswith(f"unloaded {tiny_lm.random_path} [causal] (shutdown)") for m in messages), messages
    assert messages[-1].startswith("Finished server process")
