"""Foundation behaviour over real HTTP: errors, request ids, auth, body limit, meta routes, settings."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.manager import ModelManager
from server import parse_args, settings_from_args
from tests.conftest import make_settings
from tests.fakes import FakeLoader, FakeResolver

ROOT = Path(__file__).resolve().parents[1]


def assert_envelope(response, status: int, code: str | None, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["detail"] == body["error"]["message"]
    assert body["error"]["code"] == code
    if param is not None:
        assert body["error"]["param"] == param
    assert "Traceback" not in body["detail"]
    return body


def fake_manager(tmp_path: Path, loader: FakeLoader | None = None, **overrides: object) -> ModelManager:
    return ModelManager(make_settings(tmp_path, **overrides), FakeResolver(), loader=loader or FakeLoader())


def test_every_response_carries_a_request_id(client: TestClient) -> None:
    assert len(client.get("/health").headers["X-Request-ID"]) >= 16
    assert client.get("/nope", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"


def test_unknown_route_and_wrong_method_use_the_envelope(client: TestClient) -> None:
    assert_envelope(client.get("/v1/nothing"), 404, "not_found")
    assert_envelope(client.delete("/health"), 405, "method_not_allowed")


def test_validation_errors_are_400_with_param(client: TestClient) -> None:
    assert_envelope(client.post("/v1/models/load", json={"model": 5}), 400, "invalid_value", "model")
    assert_envelope(client.post("/v1/models/load", json={}), 400, "invalid_value", "model")
    bad_json = client.post("/v1/models/load", content=b"{nope", headers={"content-type": "application/json"})
    assert_envelope(bad_json, 400, "invalid_value")
    assert_envelope(client.post("/v1/models/load", json={"model": "x", "type": "toaster"}), 400, "invalid_value",
                    "type")


def test_unknown_model_is_a_fast_404(client: TestClient) -> None:
    started = time.perf_counter()
    body = assert_envelope(client.post("/v1/models/load", json={"model": "nobody/nothing", "type": "causal"}),
                           404, "model_not_found", "model")
    assert time.perf_counter() - started < 1.0
    assert "nobody/nothing" in body["detail"]
    assert_envelope(client.post("/v1/models/load", json={"model": "/no/such/dir", "type": "causal"}), 404,
                    "model_not_found")


def test_unexpected_errors_are_500_naming_the_request_id(app_factory) -> None:
    app = app_factory()

    def boom() -> None:
        raise ZeroDivisionError("secret internals")

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/boom", headers={"X-Request-ID": "req-42"})
    body = assert_envelope(r, 500, None)
    assert "req-42" in body["detail"] and "secret" not in body["detail"]
    assert body["error"]["type"] == "server_error"


def test_api_key_guards_everything_but_health_and_image_files(client_factory) -> None:
    c = client_factory(api_key="s3cret")
    assert c.get("/health").status_code == 200
    for path in ("/v1/models", "/metrics", "/openapi.json", "/docs"):
        assert_envelope(c.get(path), 401, "invalid_api_key")
        assert_envelope(c.get(path, headers={"Authorization": "Bearer wrong"}), 401, "invalid_api_key")
        assert c.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert c.get("/v1/files/images/" + "0" * 32 + ".png").status_code != 401


def test_without_a_key_any_authorization_header_is_accepted(client: TestClient) -> None:
    assert client.get("/v1/models", headers={"Authorization": "Bearer universal"}).status_code == 200


def test_body_limit_is_413_with_and_without_content_length(client_factory) -> None:
    c = client_factory(max_body_mb=0.01)  # 10 KiB
    big = b"x" * 20_000
    assert_envelope(c.post("/v1/models/load", content=big, headers={"content-type": "application/json"}), 413,
                    "payload_too_large")

    def chunks():
        for _ in range(20):
            yield b"x" * 1000

    r = c.post("/v1/models/load", content=chunks(), headers={"content-type": "application/json"})
    assert_envelope(r, 413, "payload_too_large")


def test_allow_list_refuses_other_models_with_403(client_factory) -> None:
    c = client_factory(allowed_models=["sentence-transformers/*"])
    assert_envelope(c.post("/v1/models/load", json={"model": "org/other", "type": "causal"}), 403,
                    "model_not_allowed", "model")


def test_health_reports_device_and_version(client: TestClient) -> None:
    body = client.get("/health").json()
    assert body["status"] == "healthy" and body["version"]
    device = body["device"]
    assert device["type"] == device["device"] == "cpu"
    for key in ("name", "memory_total", "memory_allocated", "platform", "python_version", "torch_version"):
        assert key in device
    assert isinstance(device["memory_total"], int) and isinstance(device["memory_allocated"], int)
    assert body["loaded_models"] == [] and body["timestamp"].endswith("Z")


def test_models_list_shows_packaged_defaults_and_lookup_by_encoded_id(client: TestClient) -> None:
    data = client.get("/v1/models").json()["data"]
    ids = {m["id"]: m for m in data}
    minilm = ids["sentence-transformers/all-MiniLM-L6-v2"]
    assert minilm["status"] == "available" and minilm["type"] == "encoder" and minilm["memory_bytes"] is None
    assert ids["default"]["status"] == "available"
    raw = client.get("/v1/models/sentence-transformers/all-MiniLM-L6-v2")
    encoded = client.get("/v1/models/sentence-transformers%2Fall-MiniLM-L6-v2")
    assert raw.json()["id"] == encoded.json()["id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert_envelope(client.get("/v1/models/nope/nope"), 404, "model_not_found")


def test_load_pin_and_unload_round_trip(client_factory, tmp_path: Path) -> None:
    c = client_factory(manager=fake_manager(tmp_path))
    item = c.post("/v1/models/load", json={"model": "fake/a", "type": "encoder", "pin": True}).json()
    assert item["status"] == "loaded" and item["pinned"] is True and item["memory_bytes"] == 1000
    assert c.get("/health").json()["loaded_models"] == ["fake/a"]
    assert c.get("/v1/models/fake/a").json()["status"] == "loaded"
    gone = c.post("/v1/models/unload", json={"model": "fake/a"}).json()
    assert gone["status"] == "available" and gone["pinned"] is False
    assert_envelope(c.post("/v1/models/unload", json={"model": "fake/a"}), 404, "model_not_found")
    metrics = c.get("/metrics").text
    assert "universal_runtime_model_loads_total 1.0" in metrics
    assert "universal_runtime_model_evictions_total 1.0" in metrics
    assert 'universal_runtime_requests_total{route="/v1/models/load",status="200"}' in metrics


def test_health_stays_fast_while_a_model_loads_and_runs(client_factory, tmp_path: Path) -> None:
    loader = FakeLoader(delays={"fake/slow": 1.5})
    manager = fake_manager(tmp_path, loader)
    c = client_factory(manager=manager)
    c.get("/health")  # device facts computed once
    t = threading.Thread(target=lambda: c.post("/v1/models/load", json={"model": "fake/slow", "type": "encoder"}))
    t.start()
    time.sleep(0.2)
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        assert c.get("/health").status_code == 200
        timings.append(time.perf_counter() - started)
        time.sleep(0.1)
    t.join()
    assert max(timings) < 0.1, timings
    assert c.get("/health").json()["loaded_models"] == ["fake/slow"]


def test_import_and_create_app_do_not_import_heavy_libraries() -> None:
    code = ("import sys, server; server.create_app(); "
            "print(','.join(m for m in ('transformers', 'diffusers', 'sentence_transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


@pytest.mark.slow
def test_health_answers_within_three_seconds_of_process_start(tmp_path: Path) -> None:
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "server.py", "--port", str(port), "--output-dir", str(tmp_path)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - started < 20:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        elapsed = time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait(10)
    assert elapsed < 3.0, elapsed


def test_flags_override_environment_and_legacy_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRANSFORMERS_PORT", "9999")
    monkeypatch.setenv("UNIVERSAL_RUNTIME_PRELOAD", "a, b")
    monkeypatch.setenv("TRANSFORMERS_FORCE_CPU", "1")
    s = settings_from_args(parse_args([]))
    assert s.port == 9999 and s.preload == ["a", "b"] and s.force_cpu
    s = settings_from_args(parse_args(["--port", "1234", "--device", "cpu", "--preload", "x"]))
    assert s.port == 1234 and s.device == "cpu" and s.preload == ["x"]


def test_refuses_non_loopback_bind_without_key() -> None:
    out = subprocess.run([sys.executable, "server.py", "--host", "0.0.0.0"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0 and "API key" in out.stderr
