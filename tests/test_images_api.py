"""Images API over real HTTP (TestClient) with tiny real diffusion pipelines: generations, negotiation,
validation, seeds, per-request schedulers, and the generated-file route."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import make_settings

URL = re.compile(r"^http://testserver/v1/files/images/([0-9a-f]{32}\.png)$")


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("images-api")


@pytest.fixture(scope="module")
def api(out_dir: Path, tiny_sd: Path, tiny_sd_inpaint: Path) -> Iterator[TestClient]:
    """One app (and one model load) for the whole module."""
    from server import create_app

    with TestClient(create_app(make_settings(out_dir)), raise_server_exceptions=False) as client:
        yield client


def gen(api: TestClient, model: Path, headers: dict[str, str] | None = None, **fields: Any) -> Any:
    body = {"model": str(model), "prompt": "a red cat", "num_inference_steps": 2, **fields}
    return api.post("/v1/images/generations", json=body, headers=headers or {})


def b64_image(response: Any, index: int = 0) -> Image.Image:
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(base64.b64decode(response.json()["data"][index]["b64_json"])))


def pixels(img: Image.Image) -> bytes:
    return img.convert("RGB").tobytes()


def close(a: bytes, b: bytes, tolerance: int = 2) -> bool:
    import numpy as np

    return int(np.abs(np.frombuffer(a, np.uint8).astype(int) - np.frombuffer(b, np.uint8)).max()) <= tolerance


def test_generation_url_is_absolute_and_served_as_png(api: TestClient, tiny_sd: Path, out_dir: Path) -> None:
    r = gen(api, tiny_sd, prompt="  a red cat  ")
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body["created"], int) and len(body["data"]) == 1
    item = body["data"][0]
    assert item["revised_prompt"] == "  a red cat  "  # the prompt as received
    match = URL.match(item["url"])
    assert match, item["url"]
    assert (out_dir / "outputs" / match.group(1)).is_file()
    served = api.get(item["url"].replace("http://testserver", ""))
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    head = api.head(item["url"])
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(served.content))
    img = Image.open(io.BytesIO(served.content))
    assert img.format == "PNG" and img.size == (64, 64)  # the model's native size


def test_b64_json_size_and_n(api: TestClient, tiny_sd: Path) -> None:
    r = gen(api, tiny_sd, response_format="b64_json", size="128x64", n=3, seed=5)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert len(data) == 3 and all("url" not in d for d in data)
    images = [b64_image(r, i) for i in range(3)]
    assert all(img.size == (128, 64) for img in images)
    assert len({pixels(img) for img in images}) == 3


def test_same_seed_same_image_and_seed_plus_index(api: TestClient, tiny_sd: Path) -> None:
    one = pixels(b64_image(gen(api, tiny_sd, response_format="b64_json", seed=42)))
    again = pixels(b64_image(gen(api, tiny_sd, response_format="b64_json", seed=42)))
    other = pixels(b64_image(gen(api, tiny_sd, response_format="b64_json", seed=43)))
    assert one == again and one != other
    pair = gen(api, tiny_sd, response_format="b64_json", seed=42, n=2)
    # image i of a batch uses seed + i (equal up to batched-matmul rounding)
    assert close(pixels(b64_image(pair, 0)), one) and close(pixels(b64_image(pair, 1)), other)
    assert not close(pixels(b64_image(pair, 1)), one)


def test_no_seed_is_random_and_global_rng_untouched(api: TestClient, tiny_sd: Path) -> None:
    import torch

    state = torch.random.get_rng_state()
    a = pixels(b64_image(gen(api, tiny_sd, response_format="b64_json")))
    b = pixels(b64_image(gen(api, tiny_sd, response_format="b64_json", seed=-1)))
    assert a != b
    assert torch.equal(state, torch.random.get_rng_state())


@pytest.mark.parametrize("field,value", [("negative_prompt", "blue sky"), ("guidance_scale", 1.0),
                                         ("num_inference_steps", 3)])
def test_sampling_fields_change_the_image(api: TestClient, tiny_sd: Path, field: str, value: Any) -> None:
    base = pixels(b64_image(gen(api, tiny_sd, response_format="b64_json", seed=9)))
    changed = pixels(b64_image(gen(api, tiny_sd, response_format="b64_json", seed=9, **{field: value})))
    assert base != changed


def test_scheduler_applies_to_one_request_only(api: TestClient, tiny_sd: Path) -> None:
    before = pixels(b64_image(gen(api, tiny_sd, response_format="b64_json", seed=7)))
    euler = pixels(b64_image(gen(api, tiny_sd, response_format="b64_json", seed=7, scheduler="euler_a")))
    after = pixels(b64_image(gen(api, tiny_sd, response_format="b64_json", seed=7)))
    assert euler != before and after == before
    entry = next(e for e in api.app.state.manager.entries() if e.spec.key == str(tiny_sd))
    for pipe in entry.model.pipes.values():
        assert type(pipe.scheduler).__name__ == "DDIMScheduler"
        assert pipe.config["scheduler"][1] == "DDIMScheduler"


@pytest.mark.parametrize("name", ["ddim", "ddpm", "pndm", "lms", "euler", "euler_a", "heun", "dpm++",
                                  "dpm++_karras", "dpm++_sde", "dpm_single", "kdpm2", "kdpm2_a", "unipc",
                                  "deis", "lcm", "tcd", "DPMPP_2M", "k_euler_a"])
def test_every_scheduler_name_generates(api: TestClient, tiny_sd: Path, name: str) -> None:
    img = b64_image(gen(api, tiny_sd, response_format="b64_json", seed=1, scheduler=name, num_inference_steps=2))
    assert img.size == (64, 64)


def test_scheduler_of_another_family_is_a_400(api: TestClient, tiny_sd: Path) -> None:
    r = gen(api, tiny_sd, scheduler="flow_euler")
    assert r.status_code == 400 and r.json()["error"]["param"] == "scheduler"
    assert "euler_a" in r.json()["error"]["message"]


@pytest.mark.parametrize("fields,param", [
    ({"n": 0}, "n"), ({"n": 11}, "n"), ({"size": "100x100"}, "size"), ({"size": "32x32"}, "size"),
    ({"size": "4096x4096"}, "size"), ({"size": "big"}, "size"), ({"num_inference_steps": 0}, "num_inference_steps"),
    ({"num_inference_steps": 151}, "num_inference_steps"), ({"guidance_scale": -1}, "guidance_scale"),
    ({"guidance_scale": 31}, "guidance_scale"), ({"scheduler": "bogus"}, "scheduler"),
    ({"response_format": "xml"}, "response_format"), ({"prompt": ""}, "prompt"), ({"seed": -5}, "seed"),
])
def test_bad_fields_are_400_naming_the_field(api: TestClient, tiny_sd: Path, fields: dict[str, Any],
                                             param: str) -> None:
    r = gen(api, tiny_sd, **fields)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and r.json()["detail"] == err["message"]


def test_missing_prompt_and_non_json_body(api: TestClient, tiny_sd: Path) -> None:
    r = api.post("/v1/images/generations", json={"model": str(tiny_sd)})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = api.post("/v1/images/generations", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400


def test_quality_style_accepted_and_reported_unknown_fields_ignored(api: TestClient, tiny_sd: Path) -> None:
    r = gen(api, tiny_sd, quality="hd", style="vivid", user="u1", tools=[], size="auto", n=None,
            response_format=None, seed=None, negative_prompt=None)
    assert r.status_code == 200, r.text
    assert set(r.headers["x-ignored-params"].split(",")) == {"quality", "style"}


@pytest.mark.parametrize("accept,kind", [
    ("*/*", "json"), ("application/json", "json"), ("image/png", "PNG"), ("image/jpeg", "JPEG"),
    ("image/webp", "WEBP"), ("image/*", "PNG"), ("image/png, application/json", "json"),
    ("image/webp;q=0.5, image/jpeg", "JPEG"), ("text/html, image/png;q=0", "json"),
])
def test_accept_negotiation(api: TestClient, tiny_sd: Path, accept: str, kind: str) -> None:
    r = gen(api, tiny_sd, headers={"accept": accept})
    assert r.status_code == 200, r.text
    if kind == "json":
        assert r.headers["content-type"].startswith("application/json") and URL.match(r.json()["data"][0]["url"])
    else:
        assert r.headers["content-type"] == f"image/{kind.lower()}"
        assert Image.open(io.BytesIO(r.content)).format == kind


def test_accept_image_with_several_images_gets_json(api: TestClient, tiny_sd: Path) -> None:
    r = gen(api, tiny_sd, n=2, response_format="b64_json", headers={"accept": "image/png"})
    assert r.status_code == 200 and len(r.json()["data"]) == 2 and "b64_json" in r.json()["data"][0]


def test_inpainting_checkpoint_cannot_generate(api: TestClient, tiny_sd_inpaint: Path) -> None:
    r = gen(api, tiny_sd_inpaint)
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_model_type"


def test_folder_that_is_no_pipeline_is_unsupported(api: TestClient, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"architectures": ["BertModel"], "model_type": "bert"}')
    r = gen(api, tmp_path)
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_model_type"
    other = tmp_path / "upscaler"
    other.mkdir()
    (other / "model_index.json").write_text('{"_class_name": "StableDiffusionUpscalePipeline"}')
    r = gen(api, other)
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_model_type"


def test_progress_is_logged_per_request_id(api: TestClient, tiny_sd: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="universal_runtime.diffusion")
    r = gen(api, tiny_sd, num_inference_steps=3, headers={"x-request-id": "img-progress-1"})
    assert r.status_code == 200
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "universal_runtime.diffusion"]
    assert "request img-progress-1: step 3/3" in lines
    assert any(line.startswith("request img-progress-1: step 1/3") for line in lines)


# ----- generated files -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", [
    "0" * 32 + ".png", "..%2F..%2Fetc%2Fpasswd", "../../etc/passwd", "%2e%2e%2fsecret.png", "A" * 32 + ".png",
    "0" * 31 + ".png", "0" * 32 + ".png.tmp", "0" * 32 + ".PNG", "0" * 32 + ".jpg",
])
def test_file_route_refuses_unknown_and_malformed_names(api: TestClient, name: str) -> None:
    r = api.get(f"/v1/files/images/{name}")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/json")


def test_file_route_ignores_symlinks_and_temp_files(api: TestClient, out_dir: Path, tmp_path: Path) -> None:
    store = out_dir / "outputs"
    store.mkdir(parents=True, exist_ok=True)
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    link = store / ("1" * 32 + ".png")
    link.symlink_to(secret)
    (store / (".2" + "2" * 31 + ".png.tmp")).write_bytes(b"x")
    assert api.get(f"/v1/files/images/{link.name}").status_code == 404


def test_files_are_public_with_an_api_key_but_generation_is_not(out_dir: Path, tiny_sd: Path) -> None:
    from server import create_app

    with TestClient(create_app(make_settings(out_dir, api_key="sekret")), raise_server_exceptions=False) as c:
        denied = c.post("/v1/images/generations", json={"model": str(tiny_sd), "prompt": "a cat"})
        assert denied.status_code == 401
        ok = c.post("/v1/images/generations", headers={"authorization": "Bearer sekret"},
                    json={"model": str(tiny_sd), "prompt": "a cat", "num_inference_steps": 1})
        assert ok.status_code == 200, ok.text
        path = ok.json()["data"][0]["url"].replace("http://testserver", "")
        served = c.get(path)  # no Authorization header
        assert served.status_code == 200 and served.content.startswith(b"\x89PNG")


def test_names_carry_128_random_bits_and_no_prompt_text(api: TestClient, tiny_sd: Path, out_dir: Path) -> None:
    r = gen(api, tiny_sd, n=2, prompt="../../etc/passwd cat")
    names = [URL.match(d["url"]).group(1) for d in r.json()["data"]]  # type: ignore[union-attr]
    assert len(set(names)) == 2
    assert all((out_dir / "outputs" / n).resolve().parent == (out_dir / "outputs").resolve() for n in names)
