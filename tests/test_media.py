"""The one media decoder (core/media.py): every rule of API.md's "Media strings", each failure a 400 naming
the field."""

from __future__ import annotations

import base64
import io
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from core.errors import InvalidRequest
from core.media import decode_image, has_alpha, load_image, load_media_bytes
from tests.conftest import make_settings


def png_bytes(size: tuple[int, int] = (8, 6), color: Any = (200, 30, 40), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(size: tuple[int, int] = (16, 16), exif: Image.Exif | None = None) -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", size, (10, 120, 240))
    img.save(buf, format="JPEG", **({"exif": exif} if exif is not None else {}))
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def bad(value: Any, field: str, settings: Any, match: str | None = None) -> InvalidRequest:
    """Assert load_image refuses `value` with a 400 naming `field`; return the error."""
    with pytest.raises(InvalidRequest) as info:
        load_image(value, field, settings)
    err = info.value
    assert err.status == 400 and err.param == field and field in err.message
    if match:
        assert match in err.message
    return err


@pytest.fixture
def settings(tmp_path: Path) -> Any:
    media = tmp_path / "media"
    media.mkdir()
    return make_settings(tmp_path, media_dirs=[str(media)])


@pytest.fixture
def media_dir(settings: Any) -> Path:
    return Path(settings.media_dirs[0])


# ----- base64, data URLs, bytes -------------------------------------------------------------------------
def test_plain_base64_png(settings: Any) -> None:
    img = load_image(b64(png_bytes((8, 6))), "image", settings)
    assert img.size == (8, 6) and img.mode == "RGB" and img.getpixel((0, 0)) == (200, 30, 40)


def test_urlsafe_unpadded_and_wrapped_base64(settings: Any) -> None:
    text = base64.urlsafe_b64encode(png_bytes()).decode().rstrip("=")
    wrapped = "\n".join(text[i:i + 60] for i in range(0, len(text), 60))
    assert load_image(wrapped, "image", settings).size == (8, 6)


def test_base64_jpeg_starting_with_slash_is_never_a_path(tmp_path: Path) -> None:
    value = b64(jpeg_bytes())
    assert value.startswith("/9j/")
    # even with "/" itself as a media dir, the base64 text is decoded, never taken for a path
    settings = make_settings(tmp_path, media_dirs=["/"])
    assert load_image(value, "images.0", settings).size == (16, 16)


def test_long_base64_jpeg_over_path_length(settings: Any) -> None:
    buf = io.BytesIO()
    Image.effect_noise((128, 128), 60).convert("RGB").save(buf, format="JPEG")
    value = b64(buf.getvalue())
    assert len(value) > 4096 and value.startswith("/9j/")
    assert load_image(value, "image", settings).size == (128, 128)


def test_data_url_base64_and_percent_encoded(settings: Any) -> None:
    data = png_bytes((5, 7))
    assert load_image("data:image/png;base64," + b64(data), "image", settings).size == (5, 7)
    assert load_media_bytes("data:text/plain,hello%20world", "file", settings) == b"hello world"


def test_bad_data_url_is_400(settings: Any) -> None:
    bad("data:image/png;base64,@@@not base64@@@", "image", settings)
    bad("data:nonsense-without-comma", "image", settings)


def test_multipart_bytes(settings: Any) -> None:
    assert load_image(png_bytes((3, 4)), "file", settings).size == (3, 4)
    bad(b"", "file", settings, "empty")
    bad(b"definitely not an image", "file", settings, "could not be decoded")


def test_garbage_empty_and_wrong_type(settings: Any) -> None:
    bad("!!! not base64 !!!", "images.2", settings)
    bad("   ", "image", settings)
    bad(12345, "image", settings)
    bad(b64(b"valid base64 but not an image"), "image", settings, "could not be decoded")


# ----- server paths -------------------------------------------------------------------------------------
def test_path_inside_media_dir(settings: Any, media_dir: Path) -> None:
    (media_dir / "sub").mkdir()
    (media_dir / "sub" / "a.png").write_bytes(png_bytes((9, 2)))
    assert load_image(str(media_dir / "sub" / "a.png"), "image", settings).size == (9, 2)


def test_path_outside_media_dir_is_400(settings: Any, tmp_path: Path) -> None:
    outside = tmp_path / "secret.png"
    outside.write_bytes(png_bytes())
    bad(str(outside), "image", settings, "MEDIA_DIRS")


def test_dotdot_escape_is_400(settings: Any, media_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "secret.png").write_bytes(png_bytes())
    bad(f"{media_dir}/../secret.png", "image", settings, "MEDIA_DIRS")


def test_symlink_escape_is_400(settings: Any, media_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "secret.png").write_bytes(png_bytes())
    os.symlink(tmp_path / "secret.png", media_dir / "link.png")
    bad(str(media_dir / "link.png"), "image", settings, "MEDIA_DIRS")
    os.symlink(tmp_path, media_dir / "dirlink")
    bad(str(media_dir / "dirlink" / "secret.png"), "image", settings, "MEDIA_DIRS")


def test_paths_refused_without_media_dirs(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png_bytes())
    bad(str(tmp_path / "a.png"), "image", make_settings(tmp_path), "MEDIA_DIRS")


def test_missing_file_inside_media_dir_is_400(settings: Any, media_dir: Path) -> None:
    bad(str(media_dir / "nope.png"), "image", settings)


# ----- URLs ---------------------------------------------------------------------------------------------
@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Any attempt to open an HTTP connection is recorded and fails the test."""
    import httpx

    calls: list[str] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        calls.append(str(args))
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr(httpx, "stream", refuse)
    return calls


def test_url_refused_when_fetch_disabled(settings: Any, no_network: list[str]) -> None:
    bad("https://example.com/cat.png", "image", settings, "ALLOW_URL_FETCH")
    bad("http://127.0.0.1:9/cat.png", "image", settings, "ALLOW_URL_FETCH")
    assert no_network == []


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/cat.png", "http://localhost/cat.png", "http://[::1]/x.png",
                                 "http://10.1.2.3/x.png", "http://192.168.0.1/x.png", "http://169.254.169.254/x"])
def test_url_to_private_address_refused_before_connecting(tmp_path: Path, no_network: list[str], url: str) -> None:
    settings = make_settings(tmp_path, allow_url_fetch=True)
    bad(url, "image", settings, "non-public")
    assert no_network == []


def test_non_http_scheme_is_not_fetched(settings: Any, no_network: list[str]) -> None:
    bad("file:///etc/passwd", "image", settings)
    bad("ftp://example.com/x.png", "image", settings)
    assert no_network == []


# ----- decoding -----------------------------------------------------------------------------------------
def test_exif_orientation_applied(settings: Any) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    img = load_image(jpeg_bytes((20, 10), exif), "image", settings)
    assert img.size == (10, 20)


def test_rgba_composited_on_white_to_rgb(settings: Any) -> None:
    data = png_bytes((4, 4), (255, 0, 0, 0), mode="RGBA")  # fully transparent red
    img = load_image(data, "image", settings)
    assert img.mode == "RGB" and img.getpixel((1, 1)) == (255, 255, 255)
    kept = load_image(data, "image", settings, mode="RGBA")
    assert kept.mode == "RGBA" and has_alpha(kept)


def test_palette_and_greyscale_to_rgb(settings: Any) -> None:
    palette = Image.new("RGB", (6, 6), (0, 128, 255)).convert("P")
    buf = io.BytesIO()
    palette.save(buf, format="PNG")
    img = load_image(buf.getvalue(), "image", settings)
    assert img.mode == "RGB" and img.size == (6, 6)
    grey = load_image(png_bytes((5, 5), 77, mode="L"), "image", settings)
    assert grey.mode == "RGB" and grey.getpixel((0, 0)) == (77, 77, 77)
    assert load_image(png_bytes(), "mask", settings, mode="L").mode == "L"


def test_has_alpha_only_when_some_pixel_transparent(settings: Any) -> None:
    opaque = load_image(png_bytes((4, 4), (1, 2, 3, 255), mode="RGBA"), "image", settings, mode="RGBA")
    assert not has_alpha(opaque)
    assert not has_alpha(load_image(png_bytes(), "image", settings))


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height (the pixel data is a stub)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + \
        chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [20_000, 100_000])
def test_decompression_bomb_header_is_400(settings: Any, side: int) -> None:
    data = _png_declaring(side, side)
    assert len(data) < 200
    err = bad(b64(data), "images.1", settings)
    assert "pixel" in err.message or "too large" in err.message


def test_real_image_over_small_pixel_limit_is_400(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_image_pixels=100)
    bad(png_bytes((11, 10)), "image", settings, "over the limit")
    assert decode_image(png_bytes((10, 10)), "image", settings).size == (10, 10)
