"""Observability: every Prometheus metric of API.md is exposed and moves on real request paths; request ids
reach every log line of a request (load and worker threads included); `--log-format json` writes only JSON."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.logs import RequestIdFilter
from tests.hardening import (  # noqa: F401 - long_prompt_fixture provides `long_prompt`
    LONG,
    chat_body,
    corrupt_copy,
    long_prompt_fixture,
    metric,
    server_process,
    wait_until,
)

P = "universal_runtime_"
NAMES = ("requests_total", "request_duration_seconds", "generated_tokens_total", "time_to_first_token_seconds",
         "queue_depth", "model_loads_total", "model_load_failures_total", "model_evictions_total", "loaded_models",
         "model_memory_bytes")
HELLO = [{"role": "user", "content": "Say hello"}]


def scrape(c: Any) -> str:
    r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return r.text


def test_metrics_endpoint_exposes_every_documented_metric(client: Any) -> None:
    text = scrape(client)
    for name in NAMES:
        assert f"# HELP {P}{name} " in text, name
    assert f"# TYPE {P}request_duration_seconds histogram" in text
    assert f"# TYPE {P}time_to_first_token_seconds histogram" in text


def test_request_metrics_count_routes_by_template_and_status(client: Any) -> None:
    for _ in range(3):
        client.get("/health")
    client.get("/v1/models/some%2Fmodel")  # 404 on a templated route: labelled by its template
    client.get("/v1/no-such-route")
    client.post("/v1/embeddings", json={})
    text = scrape(client)
    assert metric(text, P + "requests_total", route="/health", status="200") == 3
    assert metric(text, P + "requests_total", route="/v1/models/{model_id:path}", status="404") == 1
    assert metric(text, P + "requests_total", route="unmatched", status="404") == 1
    assert metric(text, P + "requests_total", route="/v1/embeddings", status="400") == 1
    assert metric(text, P + "request_duration_seconds_count", route="/health") == 3
    assert metric(text, P + "request_duration_seconds_sum", route="/health") > 0
    assert "some%2Fmodel" not in text and "no-such-route" not in text  # no label per client-chosen path


def test_generation_and_model_metrics_follow_real_requests(client_factory: Any, tiny_lm: Any, tmp_path: Path) -> None:
    c = client_factory()
    key = str(tiny_lm.path)
    first = c.post("/v1/chat/completions", json={"model": key, "messages": HELLO, "max_tokens": 40}).json()
    tokens = first["usage"]["completion_tokens"]
    assert tokens > 0
    text = scrape(c)
    assert metric(text, P + "generated_tokens_total", model=key) == tokens
    assert metric(text, P + "time_to_first_token_seconds_count", model=key) == 1
    assert metric(text, P + "model_loads_total") == 1
    assert metric(text, P + "loaded_models") == 1
    entry = c.app.state.manager.find(key)[0]
    assert metric(text, P + "model_memory_bytes", model=key) == entry.bytes > 0
    assert metric(text, P + "queue_depth", model=key) == 0

    stream = c.post("/v1/chat/completions", json={"model": key, "messages": HELLO, "stream": True,
                                                  "stream_options": {"include_usage": True}})
    frames = [json.loads(line[6:]) for line in stream.text.splitlines() if line.startswith("data: {")]
    streamed = frames[-1]["usage"]["completion_tokens"]
    legacy = c.post("/v1/completions", json={"model": key, "prompt": "The capital of France is", "max_tokens": 8})
    text = scrape(c)
    expected = tokens + streamed + legacy.json()["usage"]["completion_tokens"]
    assert metric(text, P + "generated_tokens_total", model=key) == expected
    assert metric(text, P + "time_to_first_token_seconds_count", model=key) == 3
    assert metric(text, P + "model_loads_total") == 1  # loaded once, reused

    assert c.post("/v1/models/unload", json={"model": key}).status_code == 200
    text = scrape(c)
    assert metric(text, P + "model_evictions_total") == 1
    assert metric(text, P + "loaded_models") == 0
    assert metric(text, P + "model_memory_bytes", model=key) is None

    broken = corrupt_copy(tiny_lm.path, tmp_path / "broken-lm")
    assert c.post("/v1/chat/completions", json={"model": str(broken), "messages": HELLO}).status_code == 500
    text = scrape(c)
    assert metric(text, P + "model_load_failures_total") == 1
    assert metric(text, P + "model_loads_total") == 1


def test_queue_depth_shows_requests_holding_a_model(client_factory: Any, tiny_lm: Any, long_prompt: str) -> None:
    c = client_factory()
    key = str(tiny_lm.random_path)
    body = chat_body(key, LONG, long_prompt)
    assert c.post("/v1/chat/completions", json={**body, "max_tokens": 1}).status_code == 200
    entry = c.app.state.manager.find(key)[0]
    threads = [threading.Thread(target=c.post, args=("/v1/chat/completions",),
                                kwargs={"json": body}) for _ in range(2)]
    for t in threads:
        t.start()
    assert wait_until(lambda: entry.active == 2)
    assert metric(scrape(c), P + "queue_depth", model=key) == 2
    for t in threads:
        t.join(30)
    assert metric(scrape(c), P + "queue_depth", model=key) == 0


# ----- logs ---------------------------------------------------------------------------------------------
class Collect(logging.Handler):
    """Keeps (logger, request_id, message) of every record, with the runtime's request-id filter."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(RequestIdFilter())
        self.lines: list[tuple[str, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.name, record.request_id, record.getMessage()))  # type: ignore[attr-defined]


@pytest.fixture
def collected() -> Any:
    handler = Collect()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


def test_every_log_line_of_a_request_carries_its_request_id(client_factory: Any, tiny_st_folder: Path,
                                                            tmp_path: Path, collected: Collect) -> None:
    c = client_factory()
    broken = corrupt_copy(tiny_st_folder, tmp_path / "broken")
    c.post("/v1/embeddings", json={"model": str(tiny_st_folder), "input": "hi"}, headers={"X-Request-ID": "rid-ok"})
    c.post("/v1/embeddings", json={"model": str(broken), "input": "hi"}, headers={"X-Request-ID": "rid-bad"})
    runtime = [line for line in collected.lines if line[0].startswith("universal_runtime")]
    ok = [line for line in runtime if f"{tiny_st_folder}]" in line[2] or f"loaded {tiny_st_folder} " in line[2]]
    bad = [line for line in runtime if str(broken) in line[2]]
    assert len(ok) >= 2 and len(bad) >= 2, runtime  # load stages run on the loading thread
    assert {rid for _, rid, _ in ok} == {"rid-ok"}, ok
    assert {rid for _, rid, _ in bad} == {"rid-bad"}, bad
    assert any("failed" in message for _, _, message in bad)


def test_json_log_format_writes_one_json_object_per_line(tmp_path: Path) -> None:
    with server_process(tmp_path, "--log-format", "json", api_key="k") as srv:
        auth = {"Authorization": "Bearer k"}
        with httpx.Client(base_url=srv.url, timeout=30) as http:
            assert http.get("/health", headers={"X-Request-ID": "rid-health"}).status_code == 200
            assert http.get("/v1/models", headers={"X-Request-ID": "rid-denied"}).status_code == 401
            assert http.post("/v1/models/load", headers={**auth, "X-Request-ID": "rid-missing"},
                             json={"model": str(tmp_path / "nothing"), "type": "causal"}).status_code == 404
        log_path = srv.log_path
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every stderr line parses
    assert records and all({"time", "level", "logger", "request_id", "message"} <= set(r) for r in records)
    by_id = {r["request_id"]: r["message"] for r in records if r["logger"] == "uvicorn.access"}
    assert '"GET /health HTTP/1.1" 200' in by_id["rid-health"]
    assert '"GET /v1/models HTTP/1.1" 401' in by_id["rid-denied"]
    assert '"POST /v1/models/load HTTP/1.1" 404' in by_id["rid-missing"]
    assert any(r["message"] == "Application shutdown complete." for r in records)


LIBRARY_LOGS = r"""
import logging, warnings
from core.logs import configure_logging
configure_logging("info", "json")
from transformers.utils import logging as hf_logging  # imported after: its own stderr handler must not win
from diffusers.utils import logging as df_logging
hf_logging.get_logger("transformers.ours").warning("library warning")
hf_logging.get_logger("transformers.ours").info("below the library's level")
df_logging.get_logger("diffusers.ours").warning("diffusers warning")
logging.getLogger("huggingface_hub.ours").warning("hub warning")
warnings.warn("python warning", FutureWarning)
"""


def test_json_log_format_routes_library_logs_and_warnings_into_json_lines(tmp_path: Path) -> None:
    """transformers, diffusers and huggingface_hub install stderr handlers of their own; with the server's
    logging configured, their records and Python warnings come out as our JSON lines, at the library's level."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", LIBRARY_LOGS], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]  # every line parses
    got = {(r["logger"], r["level"], r["message"].strip().split(": ")[-1]) for r in records}
    assert {("transformers.ours", "warning", "library warning"), ("diffusers.ours", "warning", "diffusers warning"),
            ("huggingface_hub.ours", "warning", "hub warning"), ("py.warnings", "warning", "python warning")} <= got
    assert not any(r["message"] == "below the library's level" for r in records)
