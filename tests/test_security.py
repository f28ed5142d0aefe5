"""Security defaults over the real HTTP stack: bind policy, API key on every route, CORS, body limits, malformed
bodies, media paths, trust_remote_code, secrets kept out of logs and responses, and the model allow-list."""

from __future__ import annotations

import base64
import io
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

import server
from core.manager import ModelManager
from core.resolve import ModelOptions, ModelSpec
from core.settings import Settings
from tests.conftest import make_settings
from tests.hardening import assert_envelope, corrupt_copy, fill_path, iter_routes, server_process

KEY = "k3y-Sup3r-Secret-0123456789"
PUBLIC = ("/health", "/v1/files/images/")


# ----- bind policy ------------------------------------------------------------------------------------
@pytest.fixture
def run_main(monkeypatch: pytest.MonkeyPatch) -> Any:
    """server.main(argv) with server.serve (uvicorn) replaced by a recorder; returns the settings it got."""
    for name in ("UNIVERSAL_RUNTIME_API_KEY", "UNIVERSAL_RUNTIME_HOST", "UNIVERSAL_RUNTIME_INSECURE",
                 "TRANSFORMERS_HOST"):
        monkeypatch.delenv(name, raising=False)
    calls: list[Settings] = []
    monkeypatch.setattr(server, "serve", lambda app, settings: calls.append(settings))
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)

    def go(*argv: str) -> Settings:
        server.main(list(argv))
        return calls[-1]

    yield go
    root.handlers[:], _ = saved
    root.setLevel(saved[1])


def test_binds_to_loopback_by_default(run_main: Any) -> None:
    assert Settings().host == "127.0.0.1"
    assert run_main().host == "127.0.0.1"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "example.org"])
def test_refuses_a_non_loopback_bind_without_a_key(run_main: Any, host: str) -> None:
    with pytest.raises(SystemExit, match="API key"):
        run_main("--host", host)


@pytest.mark.parametrize("argv", [["--host", "0.0.0.0", "--api-key", KEY], ["--host", "0.0.0.0", "--insecure"],
                                  ["--host", "::1"], ["--host", "localhost"], ["--host", "127.0.0.2"]])
def test_starts_with_a_key_with_insecure_or_on_loopback(run_main: Any, argv: list[str]) -> None:
    assert run_main(*argv).host == argv[1]


def test_key_from_the_environment_allows_a_public_bind(run_main: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNIVERSAL_RUNTIME_API_KEY", KEY)
    assert run_main("--host", "0.0.0.0").host == "0.0.0.0"


def test_insecure_flag_really_serves_on_all_interfaces(tmp_path: Path) -> None:
    with server_process(tmp_path, "--host", "0.0.0.0", "--insecure") as srv:
        assert httpx.get(srv.url + "/health", timeout=10).json()["status"] == "healthy"


# ----- API key --------------------------------------------------------------------------------------------
def test_api_key_guards_every_registered_route(client_factory: Any) -> None:
    c = client_factory(api_key=KEY)
    routes = iter_routes(c.app)
    assert len(routes) >= 25, routes  # meta + every category's routes are registered
    for method, path in routes:
        url = fill_path(path)
        public = path == "/health" or path.startswith(PUBLIC[1])
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"},
                        {"Authorization": f"Bearer {KEY}x"}, {"Authorization": f"Bearer {KEY[:-1]}"},
                        {"X-API-Key": KEY}):
            r = c.request(method, url, headers=headers)
            if public:
                assert r.status_code != 401, (method, path)
                continue
            assert r.status_code == 401, (method, path, headers)
            assert r.headers["WWW-Authenticate"] == "Bearer"
            if method != "HEAD":
                assert_envelope(r, 401, "invalid_api_key")
        for scheme in ("Bearer", "bearer"):
            r = c.request(method, url, headers={"Authorization": f"{scheme} {KEY}"})
            assert r.status_code != 401, (method, path)


def test_unknown_routes_are_401_too_so_routes_are_not_probed(client_factory: Any) -> None:
    c = client_factory(api_key=KEY)
    assert_envelope(c.get("/v1/secret-route"), 401, "invalid_api_key")
    assert_envelope(c.get("/v1/secret-route", headers={"Authorization": f"Bearer {KEY}"}), 404, "not_found")


def test_key_comparison_is_constant_time(client_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import core.middleware

    seen: list[tuple[bytes, bytes]] = []
    real = core.middleware.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(core.middleware.hmac, "compare_digest", spy)
    c = client_factory(api_key=KEY)
    assert c.get("/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert c.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert seen == [(b"nope", KEY.encode()), (KEY.encode(), KEY.encode())]


# ----- CORS -----------------------------------------------------------------------------------------------
PREFLIGHT = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization, content-type"}


def test_no_cors_origin_is_allowed_by_default(client: Any) -> None:
    r = client.options("/v1/chat/completions", headers=PREFLIGHT)
    assert "access-control-allow-origin" not in r.headers
    simple = client.get("/v1/models", headers={"Origin": PREFLIGHT["Origin"]})
    assert simple.status_code == 200 and "access-control-allow-origin" not in simple.headers


def test_configured_cors_origins_answer_preflight_and_only_them(client_factory: Any) -> None:
    c = client_factory(cors_origins=["http://app.example"], api_key=KEY)
    r = c.options("/v1/chat/completions", headers=PREFLIGHT)  # browsers send preflights without credentials
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "http://app.example"
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    denied = c.options("/v1/chat/completions", headers={**PREFLIGHT, "Origin": "http://evil.example"})
    assert denied.status_code == 400 and "access-control-allow-origin" not in denied.headers
    assert_envelope(denied, 400, "cors_not_allowed")  # the refusal is JSON like every other error
    # the real request still needs the key; the 401 is readable by the allowed origin, with the request id
    r = c.get("/v1/models", headers={"Origin": "http://app.example"})
    assert_envelope(r, 401, "invalid_api_key")
    assert r.headers["access-control-allow-origin"] == "http://app.example"
    assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
    r = c.get("/v1/models", headers={"Origin": "http://evil.example", "Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


# ----- body limit -----------------------------------------------------------------------------------------
def _multipart(size: int) -> tuple[bytes, str]:
    request = httpx.Request("POST", "http://x", files={"file": ("a.png", b"x" * size, "image/png")},
                            data={"model": "m", "prompt": "p"})
    return request.read(), request.headers["content-type"]


def test_body_limit_is_exactly_max_body_mb_mebibytes(client_factory: Any) -> None:
    c = client_factory(max_body_mb=0.01)
    limit = int(0.01 * 2**20)
    at_limit = c.post("/v1/embeddings", content=b" " * limit, headers={"content-type": "application/json"})
    assert at_limit.status_code == 400, at_limit.text  # parsed (empty JSON), not refused for size
    assert_envelope(c.post("/v1/embeddings", content=b" " * (limit + 1), headers={"content-type": "application/json"}),
                    413, "payload_too_large")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings", "/v1/images/generations",
                                  "/v1/vision/clip", "/v1/multimodal/vqa"])
def test_json_routes_refuse_big_bodies_with_and_without_content_length(client_factory: Any, path: str) -> None:
    c = client_factory(max_body_mb=0.01)
    body = b'{"model": "x", "input": "' + b"a" * 20_000 + b'"}'
    assert_envelope(c.post(path, content=body, headers={"content-type": "application/json"}), 413,
                    "payload_too_large")

    def chunks() -> Any:
        for i in range(0, len(body), 1000):
            yield body[i:i + 1000]

    assert_envelope(c.post(path, content=chunks(), headers={"content-type": "application/json"}), 413,
                    "payload_too_large")


@pytest.mark.parametrize("path", ["/v1/images/edits", "/v1/images/variations", "/v1/vision/classify/upload",
                                  "/v1/vision/clip/upload", "/v1/multimodal/caption/upload"])
def test_multipart_routes_refuse_big_uploads_streamed_or_not(client_factory: Any, path: str) -> None:
    c = client_factory(max_body_mb=0.01)
    body, content_type = _multipart(20_000)
    assert_envelope(c.post(path, content=body, headers={"content-type": content_type}), 413, "payload_too_large")

    def chunks() -> Any:
        for i in range(0, len(body), 1000):
            yield body[i:i + 1000]

    assert_envelope(c.post(path, content=chunks(), headers={"content-type": content_type}), 413,
                    "payload_too_large")


# ----- malformed bodies -----------------------------------------------------------------------------------
def post_routes() -> list[str]:
    """Every POST route of the app, enumerated from the app itself (so a new route is covered too)."""
    return sorted({path for method, path in iter_routes(server.create_app(Settings())) if method == "POST"})


UNPARSEABLE = (b"[" * 20, b"[" * 100_000, b"{nope", b"[" * 20 + b"\xff")  # cut short, too deep, not UTF-8
NOT_AN_OBJECT = (b"[]", b'"x"', b"3", b"null")
BAD_FORMS = (("multipart/form-data", b"no boundary"),
             ("multipart/form-data; boundary=zz", b"--zz\r\nContent-Disposition: form-data\r\n\r\nx\r\n--zz--\r\n"))


@pytest.mark.parametrize("path", post_routes())
def test_a_body_that_is_no_json_object_is_a_400_invalid_value_on_every_post_route(client: Any, path: str) -> None:
    sent = [("application/json", body) for body in UNPARSEABLE + NOT_AN_OBJECT] + list(BAD_FORMS)
    for content_type, body in sent:
        r = client.post(path, content=body, headers={"content-type": content_type})
        error = assert_envelope(r, 400, "invalid_value")["error"]
        assert error["type"] == "invalid_request_error" and error["param"] is None, (content_type, body[:24], error)


# ----- media inputs end to end --------------------------------------------------------------------------
def _png_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_png_bytes())
    return path


def test_media_paths_only_inside_media_dirs_through_a_route(client_factory: Any, tiny_vit: Path,
                                                             tmp_path: Path) -> None:
    media = tmp_path / "media"
    inside = _png(media / "ok.png")
    outside = _png(tmp_path / "private" / "secret.png")
    (media / "link.png").symlink_to(outside)
    c = client_factory(media_dirs=[str(media)])

    def classify(image: str) -> Any:
        return c.post("/v1/vision/classify", json={"model": str(tiny_vit), "images": [image]})

    assert classify(str(inside)).status_code == 200
    data_url = "data:image/png;base64," + base64.b64encode(inside.read_bytes()).decode()
    assert classify(data_url).status_code == 200
    for refused in (str(outside), str(media / ".." / "private" / "secret.png"), str(media / "link.png"),
                    "file://" + str(inside), "http://127.0.0.1:1/x.png", "/etc/passwd"):
        body = assert_envelope(classify(refused), 400, "invalid_value", "images.0")
        assert "secret" not in body["detail"].replace(refused, "")  # no file content leaks into errors


# ----- trust_remote_code ------------------------------------------------------------------------------------
def _trust(tmp_path: Path, spec: ModelSpec, **settings: Any) -> bool:
    manager = ModelManager(make_settings(tmp_path, **settings))
    return manager._context(spec, None).trust_remote_code


def test_trust_remote_code_is_off_unless_the_operator_allows_the_model(tmp_path: Path) -> None:
    spec = ModelSpec(requested="org/custom", key="org/custom", category="causal")
    other = ModelSpec(requested="evil/custom", key="evil/custom", category="causal")
    assert _trust(tmp_path, spec) is False
    assert _trust(tmp_path, spec, trust_remote_code_models=["org/*"]) is True
    assert _trust(tmp_path, other, trust_remote_code_models=["org/*"]) is False
    assert _trust(tmp_path, other, trust_remote_code=True) is True
    aliased = ModelSpec(requested="mine", key="org/custom", category="causal",
                        options=ModelOptions(model="org/custom", trust_remote_code=True))
    assert _trust(tmp_path, aliased) is True


# ----- secrets stay out of logs and responses ---------------------------------------------------------------
SECRETS = ("hf_TopLevelSecret111", "hf_HeaderSecret222", "hf_ExtraBodySecret333", "WrongKeySecret444")


def test_tokens_and_keys_never_reach_logs_or_responses(client_factory: Any, tiny_st_folder: Path, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture,
                                                       capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    broken = corrupt_copy(tiny_st_folder, tmp_path / "broken-st")
    c = client_factory(api_key=KEY)
    auth = {"Authorization": f"Bearer {KEY}"}
    top, header, extra, wrong = SECRETS
    responses = [
        c.post("/v1/embeddings", headers=auth, json={"model": str(tiny_st_folder), "input": "hi",
                                                      "huggingface_token": top}),
        c.post("/v1/embeddings", headers={**auth, "X-LF-Huggingface-Token": header},
               json={"model": "someorg/not-cached-model", "input": "hi"}),
        c.post("/v1/embeddings", headers={**auth, "X-LF-Huggingface-Token": header},
               json={"model": str(broken), "input": "hi", "extra_body": {"huggingface_token": extra}}),
        c.post("/v1/chat/completions", headers={**auth, "X-LF-Huggingface-Token": header},
               json={"model": "org/x", "messages": "bad", "huggingface_token": top}),
        c.post("/v1/embeddings", headers={"Authorization": f"Bearer {wrong}"}, json={"model": "x", "input": "a"}),
        c.get("/metrics", headers=auth),
    ]
    assert [r.status_code for r in responses] == [200, 404, 500, 400, 401, 200]
    assert "model_load_failed" in responses[2].text
    out, err = capfd.readouterr()
    seen = caplog.text + out + err + "".join(r.text + str(r.headers) for r in responses)
    seen += "".join(str(record.__dict__) for record in caplog.records)
    for secret in SECRETS:
        assert secret not in seen, secret


# ----- allow-list -------------------------------------------------------------------------------------------
def test_allow_list_refuses_other_models_in_two_categories(client_factory: Any, tiny_st_folder: Path,
                                                           tiny_bert_folder: Path, tiny_vit: Path) -> None:
    c = client_factory(allowed_models=[str(tiny_st_folder), "*/vit-classif?er"])
    assert c.post("/v1/embeddings", json={"model": str(tiny_st_folder), "input": "hi"}).status_code == 200
    image = base64.b64encode(_png_bytes()).decode()
    assert c.post("/v1/vision/classify", json={"model": str(tiny_vit), "images": [image]}).status_code == 200
    refused = [
        c.post("/v1/embeddings", json={"model": str(tiny_bert_folder), "input": "hi"}),
        c.post("/v1/embeddings", json={"input": "hi"}),  # the default model is not on the list either
        c.post("/v1/vision/classify", json={"model": "google/vit-base-patch16-224", "images": [image]}),
        c.post("/v1/chat/completions", json={"model": "default", "messages": [{"role": "user", "content": "x"}]}),
        c.post("/v1/models/load", json={"model": str(tiny_bert_folder), "type": "encoder"}),
    ]
    for r in refused:
        body = assert_envelope(r, 403, "model_not_allowed", "model")
        assert body["error"]["type"] == "permission_error"
    assert sorted(c.get("/health").json()["loaded_models"]) == sorted([str(tiny_st_folder), str(tiny_vit)])

