"""The Ray Serve application (deploy/ray/app.py) on a local, loopback-only Ray cluster: 2 replicas, tiny models.

One cluster and one Serve app per module; the single-process server (an in-process TestClient with the same
settings) is the reference every answer is compared with.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from deploy.ray.local import LOOPBACK, init_local, loopback_only
from tests.conftest import make_settings
from tests.fixtures.vision import image_b64

loopback_only()  # before ray is imported: its node address is read then
ray = pytest.importorskip("ray", reason="ray is not installed (pip install .[ray]); the Ray Serve tests are skipped")
serve = pytest.importorskip("ray.serve", reason="ray[serve] is not installed; the Ray Serve tests are skipped")

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
HEADER = "serve_multiplexed_model_id"
ENV = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false",
       "RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S": "0.5"}  # as serve.yaml: busy replicas keep their models


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _settings(tmp: Path) -> dict[str, Any]:
    return {"output_dir": str(tmp / "outputs"), "torch_threads": 1, "idle_ttl_seconds": 0, "batch_wait_ms": 2,
            "max_loaded_models": 8}


_LOOPBACK_HEX = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}


def _outside_listeners() -> set[str]:
    """TCP sockets of this machine listening on an address other than loopback (wildcards included)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            address, port = fields[1].split(":")
            if fields[3] == "0A" and address not in _LOOPBACK_HEX:  # 0A: LISTEN
                found.add(f"{address}:{int(port, 16)}")
    return found


@pytest.fixture(scope="module")
def listeners_before() -> set[str]:
    return _outside_listeners()


@pytest.fixture(scope="module")
def base_url(listeners_before: set[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local Ray cluster on 127.0.0.1 with the app on 2 replicas; shut down at module end."""
    from deploy.ray.app import build

    init_local(num_cpus=2, logging_level="WARNING", runtime_env={"env_vars": ENV}, log_to_driver=False)
    port = _free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        tmp = tmp_path_factory.mktemp("ray-app")
        serve.run(build({"num_replicas": 2, "ray_actor_options": {"num_cpus": 0.5},
                         "settings": _settings(tmp)}), name="runtime", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url)
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()


def _wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError("the Serve app did not answer /health")


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The single-process server with the same settings: the reference."""
    from server import create_app

    settings = make_settings(tmp_path_factory.mktemp("single"), max_loaded_models=8)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=120) as client:
        yield client


def _chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 12,
            "temperature": 0, **extra}


def _strip(body: dict[str, Any]) -> dict[str, Any]:
    """A response without the fields that differ between any two calls (id, timestamps, timings)."""
    return {k: v for k, v in body.items() if k not in ("id", "created", "system_fingerprint", "usage")}


def test_the_cluster_and_its_proxy_listen_on_loopback_only(http: httpx.Client, listeners_before: set[str]) -> None:
    assert ray.util.get_node_ip_address() == LOOPBACK
    assert {node["NodeManagerAddress"] for node in ray.nodes()} == {LOOPBACK}
    assert http.get("/health").status_code == 200  # proxy and replicas are up
    assert _outside_listeners() - listeners_before == set()


def test_chat_plain_and_streaming_answer_as_the_single_server(http: httpx.Client, single: TestClient,
                                                              tiny_lm: Any) -> None:
    model = str(tiny_lm.path)
    ours = http.post("/v1/chat/completions", json=_chat(model), headers={HEADER: model})
    ref = single.post("/v1/chat/completions", json=_chat(model))
    assert ours.status_code == ref.status_code == 200, ours.text
    assert _strip(ours.json()) == _strip(ref.json())
    assert ours.headers["x-request-id"] and ours.headers["x-serve-replica"]

    def stream_text(lines: list[str]) -> str:
        chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
        assert lines[-1] == "data: [DONE]" or "data: [DONE]" in lines
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])

    with http.stream("POST", "/v1/chat/completions", json=_chat(model, stream=True), headers={HEADER: model}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        ours_lines = [line for line in r.iter_lines() if line]
    with single.stream("POST", "/v1/chat/completions", json=_chat(model, stream=True)) as r:
        ref_lines = [line for line in r.iter_lines() if line]
    assert stream_text(ours_lines) == stream_text(ref_lines) == ref.json()["choices"][0]["message"]["content"]


def test_embeddings_and_vision_answer_as_the_single_server(http: httpx.Client, single: TestClient,
                                                           tiny_st_folder: Path, tiny_vit: Path) -> None:
    body = {"model": str(tiny_st_folder), "input": ["the cat sat", "a dog ran"]}
    ours, ref = http.post("/v1/embeddings", json=body).json(), single.post("/v1/embeddings", json=body).json()
    assert [d["index"] for d in ours["data"]] == [0, 1] and ours["model"] == ref["model"]
    for a, b in zip(ours["data"], ref["data"], strict=True):
        assert a["embedding"] == pytest.approx(b["embedding"], abs=1e-5)
    body = {"model": str(tiny_vit), "images": [image_b64((220, 20, 20))], "top_k": 3}
    ours, ref = http.post("/v1/vision/classify", json=body), single.post("/v1/vision/classify", json=body)
    assert ours.status_code == ref.status_code == 200, ours.text
    for a, b in zip(ours.json()["data"][0]["predictions"], ref.json()["data"][0]["predictions"], strict=True):
        assert a["label"] == b["label"] and a["score"] == pytest.approx(b["score"], abs=1e-5)


def test_errors_keep_the_openai_envelope_through_serve(http: httpx.Client, single: TestClient) -> None:
    missing = {"model": "no-such/model-anywhere", "input": "x"}
    bad = {"model": "default", "messages": "not a list"}
    for path, body, status in (("/v1/embeddings", missing, 404), ("/v1/chat/completions", bad, 400)):
        ours, ref = http.post(path, json=body), single.post(path, json=body)
        assert ours.status_code == ref.status_code == status, ours.text
        err = ours.json()["error"]
        assert set(err) >= {"message", "type", "code"}
        assert err["type"] == ref.json()["error"]["type"] and err["code"] == ref.json()["error"]["code"]


def _loads(http: httpx.Client, model: str) -> tuple[str, float]:
    """(replica, model loads so far) of the replica that serves `model`, from its own /metrics."""
    r = http.get("/metrics", headers={HEADER: model})
    found = re.search(r"^universal_runtime_model_loads_total (\S+)$", r.text, re.M)
    return r.headers["x-serve-replica"], float(found.group(1)) if found else 0.0


def test_two_models_alternating_each_stay_on_their_replica(http: httpx.Client, tiny_lm: Any) -> None:
    a, b = str(tiny_lm.path), str(tiny_lm.tools_path)
    for model in (a, b):  # first use: the replica registers the id; Serve's routers learn it within ~0.1-1 s
        assert http.post("/v1/chat/completions", json=_chat(model, max_tokens=2)).status_code == 200
    time.sleep(1.5)
    before = {model: _loads(http, model) for model in (a, b)}
    seen: dict[str, set[str]] = {a: set(), b: set()}
    for i in range(10):
        model = (a, b)[i % 2]
        r = http.post("/v1/chat/completions", json=_chat(model, max_tokens=4))  # routed on the body's model
        assert r.status_code == 200, r.text
        seen[model].add(r.headers["x-serve-replica"])
    for model in (a, b):
        replica, loads = _loads(http, model)
        assert seen[model] == {replica}, seen
        assert (replica, loads) == before[model]  # no load (nor reload) on any replica while alternating
        health = http.get("/health", headers={HEADER: model}).json()
        assert health["loaded_models"].count(model) == 1, health["loaded_models"]


def _metric(http: httpx.Client, model: str, name: str) -> float:
    """A per-model metric of the replica that serves `model`, from its own /metrics (0 when absent)."""
    r = http.get("/metrics", headers={HEADER: model})
    found = re.search(rf'^universal_runtime_{name}\{{model="{re.escape(model)}"\}} (\S+)$', r.text, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_client_leaving_a_stream_through_serve_stops_its_generation_on_the_replica(
        http: httpx.Client, tiny_lm: Any) -> None:
    """A stream's tokens are counted when it completes; a cancelled one never is. A stream the client left
    that still counted after longer than a whole generation would have run to the end on the replica."""
    model = str(tiny_lm.random_path)  # random weights: greedy decoding runs to max_tokens (~500, the context)
    long_request = _chat(model, max_tokens=2000)
    http.post("/v1/chat/completions", json=_chat(model, max_tokens=2), headers={HEADER: model})
    time.sleep(1.0)  # Serve's routers learn which replica holds the model
    before = _metric(http, model, "generated_tokens_total")
    started = time.monotonic()
    whole = http.post("/v1/chat/completions", json=long_request, headers={HEADER: model})
    duration = time.monotonic() - started
    assert whole.status_code == 200 and whole.json()["usage"]["completion_tokens"] > 400
    counted = _metric(http, model, "generated_tokens_total")
    assert counted - before == whole.json()["usage"]["completion_tokens"]  # the metric sees this replica's work
    with http.stream("POST", "/v1/chat/completions", json={**long_request, "stream": True},
                     headers={HEADER: model}) as r:
        chunks = 0
        for line in r.iter_lines():
            chunks += line.startswith("data: {")
            if chunks >= 5:
                break  # leave: the response is closed with ~500 tokens still to come
    time.sleep(max(3.0, 2 * duration))
    assert _metric(http, model, "generated_tokens_total") == counted  # the stream never ran to its end
    assert _metric(http, model, "queue_depth") == 0  # and the model was released


def _runtime_replicas() -> list[str]:
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith("SERVE_REPLICA::runtime#UniversalRuntime#")]


def test_killed_replicas_fail_running_requests_with_503_or_an_error_event_then_serve_replaces_them(
        http: httpx.Client, tiny_lm: Any) -> None:
    """A request lost before its answer is a 503; a stream lost after it started ends with an `error` event
    (code `unavailable`) and [DONE], as the single server ends a failing stream, never as if complete."""
    model = str(tiny_lm.random_path)  # untrained: never says EOS, so a long answer keeps the replica busy
    http.post("/v1/chat/completions", json=_chat(model, max_tokens=4), headers={HEADER: model})
    result: dict[str, httpx.Response] = {}

    long_request = _chat(model, max_tokens=2000)  # runs to the context limit (~500 tokens)
    started = time.monotonic()
    assert http.post("/v1/chat/completions", json=long_request, headers={HEADER: model}).status_code == 200
    duration = time.monotonic() - started

    def call() -> None:
        result["r"] = http.post("/v1/chat/completions", json=long_request)

    streamed: list[str] = []
    first_chunk = threading.Event()

    def stream() -> None:
        body = {**long_request, "stream": True}
        with http.stream("POST", "/v1/chat/completions", json=body, headers={HEADER: model}) as r:
            for line in r.iter_lines():
                streamed.append(line)
                if line.startswith("data: {"):
                    first_chunk.set()

    worker, reader = threading.Thread(target=call), threading.Thread(target=stream)
    worker.start()
    reader.start()
    assert first_chunk.wait(60)
    time.sleep(duration * 0.2)  # both requests killed while they generate
    # affinity is Serve's best effort, so the request's replica is not known for sure: kill every replica
    victims = _runtime_replicas()
    assert len(victims) == 2, victims
    for victim in victims:
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    worker.join(120)
    reader.join(120)
    assert not reader.is_alive()
    frames = [line for line in streamed if line]
    assert frames[-1] == "data: [DONE]" and frames[-2].startswith('data: {"error"'), frames[-3:]
    assert json.loads(frames[-2][6:])["error"]["code"] == "unavailable"
    lost = result["r"]
    assert lost.status_code == 503, (lost.status_code, lost.text)  # documented in docs/scaling.md#failures
    assert lost.json()["error"]["code"] == "unavailable" and lost.headers["retry-after"] == "1"
    deadline, last = time.monotonic() + 90, None
    while time.monotonic() < deadline:
        last = http.post("/v1/chat/completions", json=_chat(model, max_tokens=4), headers={HEADER: model})
        if last.status_code == 200:
            break
        time.sleep(0.5)
    assert last is not None and last.status_code == 200, last.text if last else None
    assert last.headers["x-serve-replica"] not in victims
    while time.monotonic() < deadline:  # Serve starts a replacement: 2 replicas running again
        states = serve.status().applications["runtime"].deployments["UniversalRuntime"].replica_states
        if states.get("RUNNING") == 2:
            break
        time.sleep(0.5)
    assert states.get("RUNNING") == 2, states


@pytest.mark.parametrize("name", ["serve.yaml", "rayservice.yaml"])
def test_the_serve_configs_are_valid_serve_configs(name: str) -> None:
    import yaml
    from ray.serve.schema import ServeDeploySchema

    data = yaml.safe_load((ROOT / "deploy" / "ray" / name).read_text())
    if data.get("kind") == "RayService":
        assert data["spec"]["rayClusterConfig"]["rayVersion"] == ray.__version__
        data = yaml.safe_load(data["spec"]["serveConfigV2"])
    config = ServeDeploySchema.model_validate(data)
    (application,) = config.applications
    assert application.import_path == "deploy.ray.app:build"
    assert {d.name for d in application.deployments} == {"UniversalRuntime", "Gateway"}
    env = application.runtime_env["env_vars"]
    assert all(k.startswith(("UNIVERSAL_RUNTIME_", "HF_", "TOKENIZERS_", "PYTHONPATH", "RAY_SERVE_")) for k in env)


def test_the_local_launcher_binds_ray_to_loopback_and_applies_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    from deploy.ray.run import DEFAULT_CONFIG, plan

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    init, start, apps = plan(yaml.safe_load(DEFAULT_CONFIG.read_text()))
    assert "address" not in init  # a new local cluster: init_local binds it to 127.0.0.1
    assert init["num_cpus"] >= 4.1  # 2 replicas x 2 CPUs + the gateway's share: all start on a small machine
    assert init["runtime_env"]["env_vars"]["UNIVERSAL_RUNTIME_MAX_LOADED_MODELS"] == "4"
    assert start["http_options"] == {"host": "127.0.0.1", "port": 11540}
    ((args, run),) = apps
    assert args["autoscaling_config"]["max_replicas"] == 4 and args["gateway_replicas"] == 1
    assert run == {"name": "universal-runtime", "route_prefix": "/"}
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    assert plan({"applications": []})[0]["address"] == "ray://head:10001"


def test_shutting_the_app_down_drains_a_running_stream(http: httpx.Client, tiny_lm: Any) -> None:
    """Runs last among the cluster tests: it deletes the app. A stream already running when the delete
    starts still ends with its last token and [DONE]; the delete returns only after it."""
    model = str(tiny_lm.random_path)  # random weights: greedy decoding runs to max_tokens
    first_chunk, events = threading.Event(), {}
    lines: list[str] = []

    def stream() -> None:
        body = _chat(model, stream=True, max_tokens=400)
        with http.stream("POST", "/v1/chat/completions", json=body, headers={HEADER: model}) as r:
            for line in r.iter_lines():
                if line.startswith("data: {") and '"content"' in line:
                    first_chunk.set()
                lines.append(line)
        events["done"] = time.monotonic()

    reader = threading.Thread(target=stream)
    reader.start()
    assert first_chunk.wait(60)
    events["delete"] = time.monotonic()
    serve.delete("runtime")
    events["deleted"] = time.monotonic()
    reader.join(60)
    assert events["delete"] < events["done"] <= events["deleted"] + 1, events  # the delete waited for the stream
    assert [line for line in lines if line][-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    reasons = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert reasons in (["length"], ["stop"]) and len(chunks) > 20
