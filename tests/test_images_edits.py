"""Edits (inpainting) and variations over HTTP — multipart and JSON, alpha masks, large base64 inputs —
and the official OpenAI SDK's images.generate / edit / create_variation against tiny real pipelines."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import make_settings


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, tiny_sd: Path, tiny_sd_inpaint: Path) -> Iterator[TestClient]:
    from server import create_app

    settings = make_settings(tmp_path_factory.mktemp("images-edits"))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def scene(size: tuple[int, int] = (80, 72), hole: bool = True) -> Image.Image:
    """An RGBA picture; with `hole`, its left half is fully transparent (the area to repaint)."""
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (size[1], size[0], 4), dtype=np.uint8)
    arr[..., 3] = 255
    if hole:
        arr[:, : size[0] // 2, 3] = 0
    return Image.fromarray(arr, "RGBA")


def white_left_mask(size: tuple[int, int] = (80, 72)) -> Image.Image:
    arr = np.zeros((size[1], size[0]), dtype=np.uint8)
    arr[:, : size[0] // 2] = 255
    return Image.fromarray(arr, "L")


def image_of(r: Any, index: int = 0) -> Image.Image:
    assert r.status_code == 200, r.text
    return Image.open(io.BytesIO(base64.b64decode(r.json()["data"][index]["b64_json"]))).convert("RGB")


def multipart(api: TestClient, route: str, files: dict[str, bytes], **fields: Any) -> Any:
    data = {k: str(v) for k, v in fields.items()}
    return api.post(route, data=data, files={k: (f"{k}.png", v, "image/png") for k, v in files.items()})


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ----- edits ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["tiny_sd_inpaint", "tiny_sd"])
def test_multipart_edit_takes_the_mask_from_alpha(api: TestClient, which: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(which)
    r = multipart(api, "/v1/images/edits", {"image": png(scene())}, model=model, prompt="a cat",
                  num_inference_steps=2, response_format="b64_json", seed=1)
    img = image_of(r)
    assert img.size == (80, 72)  # the input's size (already a multiple of 8)
    assert r.json()["data"][0]["revised_prompt"] == "a cat"


def test_alpha_mask_equals_explicit_white_mask_and_transparent_mask(api: TestClient, tiny_sd_inpaint: Path) -> None:
    common = {"model": str(tiny_sd_inpaint), "prompt": "a dog", "num_inference_steps": 2, "seed": 3,
              "response_format": "b64_json"}
    by_alpha = image_of(api.post("/v1/images/edits", json={**common, "image": b64(png(scene()))}))
    opaque = png(scene(hole=False).convert("RGB"))
    by_mask = image_of(api.post("/v1/images/edits", json={
        **common, "image": b64(opaque), "mask": b64(png(white_left_mask()))}))
    transparent = scene(hole=True)  # OpenAI-style mask: transparent = repaint
    by_openai_mask = image_of(api.post("/v1/images/edits", json={
        **common, "image": b64(opaque), "mask": "data:image/png;base64," + b64(png(transparent))}))
    assert by_alpha.tobytes() == by_mask.tobytes() == by_openai_mask.tobytes()
    flipped = image_of(api.post("/v1/images/edits", json={
        **common, "image": b64(opaque), "mask": b64(png(Image.eval(white_left_mask(), lambda v: 255 - v)))}))
    assert flipped.tobytes() != by_mask.tobytes()


def test_edit_without_mask_or_alpha_is_a_400(api: TestClient, tiny_sd_inpaint: Path) -> None:
    r = multipart(api, "/v1/images/edits", {"image": png(scene(hole=False))}, model=tiny_sd_inpaint, prompt="x")
    assert r.status_code == 400 and r.json()["error"]["param"] == "mask"


@pytest.mark.parametrize("body,param", [
    ({"prompt": "x"}, "image"), ({"image": "not-an-image!!"}, "image"), ({"image": b64(b"hello world")}, "image"),
    ({"image": "/etc/passwd"}, "image"), ({"mask": "%%%"}, "mask"), ({"strength": 2}, "strength"),
    ({"size": "65x64"}, "size"), ({"n": 20}, "n"), ({"prompt": ""}, "prompt"),
])
def test_bad_edit_inputs_are_400s(api: TestClient, tiny_sd_inpaint: Path, body: dict[str, Any], param: str) -> None:
    full = {"model": str(tiny_sd_inpaint), "prompt": "a cat", "image": b64(png(scene())), **body}
    if param == "image" and "image" not in body:
        full.pop("image")
    r = api.post("/v1/images/edits", json=full)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_body_that_is_neither_json_nor_form(api: TestClient) -> None:
    assert api.post("/v1/images/edits", content=b"").status_code == 400
    broken = api.post("/v1/images/edits", content=b"--xyz\r\nContent-Disposition: form-data\r\n\r\nbroken",
                      headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert broken.status_code == 400 and broken.json()["error"]["message"].startswith("Malformed form data")
    r = api.post("/v1/images/edits", content=b"[1, 2]", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON object" in r.json()["error"]["message"]


def test_edit_sizes_default_to_input_rounded_down(api: TestClient, tiny_sd_inpaint: Path) -> None:
    img = scene((101, 75))
    r = api.post("/v1/images/edits", json={"model": str(tiny_sd_inpaint), "prompt": "a cat", "n": 2,
                                           "image": b64(png(img)), "num_inference_steps": 1,
                                           "response_format": "b64_json"})
    assert [image_of(r, i).size for i in range(2)] == [(96, 72), (96, 72)]
    r = api.post("/v1/images/edits", json={"model": str(tiny_sd_inpaint), "prompt": "a cat", "size": "64x128",
                                           "image": b64(png(img)), "num_inference_steps": 1,
                                           "response_format": "b64_json"})
    assert image_of(r).size == (64, 128)


def test_edit_fields_seed_negative_prompt_scheduler(api: TestClient, tiny_sd_inpaint: Path) -> None:
    base = {"model": str(tiny_sd_inpaint), "prompt": "a cat", "image": b64(png(scene())), "seed": 11,
            "num_inference_steps": 2, "response_format": "b64_json"}
    one = image_of(api.post("/v1/images/edits", json=base)).tobytes()
    assert image_of(api.post("/v1/images/edits", json=base)).tobytes() == one
    for extra in ({"negative_prompt": "blue"}, {"guidance_scale": 1.5}, {"scheduler": "euler"}, {"seed": 12}):
        assert image_of(api.post("/v1/images/edits", json={**base, **extra})).tobytes() != one


# ----- variations ----------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["tiny_sd", "tiny_sd_inpaint"])
def test_variation_multipart_without_prompt(api: TestClient, which: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(which)
    r = multipart(api, "/v1/images/variations", {"image": png(scene((72, 64), hole=False))}, model=model,
                  num_inference_steps=4, response_format="b64_json", seed=2)
    assert image_of(r).size == (72, 64)
    assert r.json()["data"][0]["revised_prompt"] is None


def test_variation_json_strength_prompt_and_seed(api: TestClient, tiny_sd: Path) -> None:
    base = {"model": str(tiny_sd), "image": b64(png(scene(hole=False))), "num_inference_steps": 4, "seed": 5,
            "response_format": "b64_json", "size": "64x64"}
    plain = image_of(api.post("/v1/images/variations", json=base)).tobytes()
    assert image_of(api.post("/v1/images/variations", json=base)).tobytes() == plain
    assert image_of(api.post("/v1/images/variations", json={**base, "prompt": "a red dog"})).tobytes() != plain
    assert image_of(api.post("/v1/images/variations", json={**base, "strength": 0.3})).tobytes() != plain
    r = api.post("/v1/images/variations", json={**base, "strength": 1.5})
    assert r.status_code == 400 and r.json()["error"]["param"] == "strength"


def test_variation_strength_zero_still_runs_one_step(api: TestClient, tiny_sd: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="universal_runtime.diffusion")
    r = api.post("/v1/images/variations", headers={"x-request-id": "var-zero"}, json={
        "model": str(tiny_sd), "image": b64(png(scene(hole=False))), "strength": 0, "num_inference_steps": 10,
        "response_format": "b64_json"})
    assert image_of(r).size == (80, 72)
    assert "request var-zero: step 1/1" in [rec.getMessage() for rec in caplog.records]


def test_large_base64_inputs_json_and_form_field(api: TestClient, tiny_sd: Path) -> None:
    noise = np.random.default_rng(1).integers(0, 255, (1400, 1400, 3), dtype=np.uint8)
    data = png(Image.fromarray(noise, "RGB"))
    assert len(data) > 5 * 2**20  # several MB, far above any path-length heuristic
    body = {"model": str(tiny_sd), "image": b64(data), "size": "64x64", "num_inference_steps": 1,
            "response_format": "b64_json"}
    assert image_of(api.post("/v1/images/variations", json=body)).size == (64, 64)
    form = {k: str(v) for k, v in body.items()}  # base64 sent as a plain (multi-MB) form field
    r = api.post("/v1/images/variations", data=form, files={"unused": ("x.txt", b"x", "text/plain")})
    assert image_of(r).size == (64, 64)


# ----- the official OpenAI SDK ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def sdk(api: TestClient) -> Any:
    from openai import OpenAI

    return OpenAI(base_url="http://testserver/v1", api_key="x", http_client=api, max_retries=0)


def test_sdk_generate_b64_and_url(sdk: Any, api: TestClient, tiny_sd: Path) -> None:
    res = sdk.images.generate(model=str(tiny_sd), prompt="a red cat", n=2, size="64x64",
                              response_format="b64_json", extra_body={"num_inference_steps": 2, "seed": 4})
    assert len(res.data) == 2 and res.data[0].revised_prompt == "a red cat"
    assert Image.open(io.BytesIO(base64.b64decode(res.data[0].b64_json))).size == (64, 64)
    res = sdk.images.generate(model=str(tiny_sd), prompt="a red cat", extra_body={"num_inference_steps": 1})
    assert res.data[0].url.startswith("http://testserver/v1/files/images/")
    assert api.get(res.data[0].url).content.startswith(b"\x89PNG")


def test_sdk_edit_with_mask_and_variation(sdk: Any, tiny_sd_inpaint: Path, tiny_sd: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="universal_runtime.diffusion")
    res = sdk.images.edit(model=str(tiny_sd_inpaint), image=("in.png", png(scene(hole=False)), "image/png"),
                          mask=("mask.png", png(scene()), "image/png"), prompt="a cat", n=1, size="64x64",
                          response_format="b64_json", extra_body={"num_inference_steps": 2})
    assert Image.open(io.BytesIO(base64.b64decode(res.data[0].b64_json))).size == (64, 64)
    assert any(rec.getMessage().endswith("step 2/2") for rec in caplog.records)  # extra_body reached the form
    res = sdk.images.create_variation(model=str(tiny_sd), image=("in.png", png(scene()), "image/png"), n=1,
                                      response_format="url", extra_body={"num_inference_steps": 2})
    assert res.data[0].url.startswith("http://testserver/v1/files/images/")


def test_sdk_errors_are_typed(sdk: Any, tiny_sd_inpaint: Path) -> None:
    import openai

    with pytest.raises(openai.BadRequestError) as info:
        sdk.images.generate(model=str(tiny_sd_inpaint), prompt="a cat")
    assert info.value.body["code"] == "unsupported_model_type"  # type: ignore[index]
