"""The one media decoder: every image (and the bytes of every audio) input of the project goes through here.

Media strings are tried in API.md's order: `data:` URL; a server path (shorter than 1024 characters,
resolving inside a configured media dir, and existing); an http(s) URL (only when enabled, never to
loopback/private/link-local addresses unless allowed, redirects re-checked); otherwise base64.
Every failure is an InvalidRequest naming the field.
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import os
import re
import socket
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import InvalidRequest

if TYPE_CHECKING:
    from PIL import Image

MAX_PATH_LENGTH = 1024
MAX_REDIRECTS = 5
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+/-]*)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,(?P<data>.*)$",
                       re.DOTALL)


def parse_data_url(value: str, field: str) -> bytes:
    """The payload of a `data:` URL (base64 or percent-encoded)."""
    match = _DATA_URL.match(value.strip())
    if not match:
        raise InvalidRequest(f"'{field}' is not a valid data: URL.", param=field)
    payload = match.group("data")
    if match.group("b64"):
        return decode_base64(payload, field)
    return urllib.parse.unquote_to_bytes(payload)


def decode_base64(value: str, field: str) -> bytes:
    """Strict base64 (standard or URL-safe alphabet, whitespace and missing padding tolerated)."""
    text = re.sub(r"\s+", "", value)
    if not text:
        raise InvalidRequest(f"'{field}' is empty.", param=field)
    text += "=" * (-len(text) % 4)
    for altchars in (None, b"-_"):
        try:
            return base64.b64decode(text, altchars=altchars, validate=True)
        except (binascii.Error, ValueError):
            continue
    raise InvalidRequest(
        f"'{field}' is not valid base64, a data: URL, an allowed server path, or an allowed URL.", param=field)


def _media_path(value: str, settings: Any) -> Path | None:
    """The resolved path if `value` names an existing file inside a media dir, else None."""
    if len(value) >= MAX_PATH_LENGTH or not settings.media_dirs or "\x00" in value:
        return None
    try:
        candidate = Path(os.path.realpath(os.path.expanduser(value)))
    except (OSError, ValueError):
        return None
    for root in settings.media_dirs:
        base = Path(os.path.realpath(os.path.expanduser(root)))
        if candidate == base or base in candidate.parents:
            return candidate if candidate.is_file() else None
    return None


def _looks_like_path(value: str) -> bool:
    return len(value) < MAX_PATH_LENGTH and (value.startswith(("/", "./", "../", "~/")) or
                                             re.match(r"^[A-Za-z]:\\", value) is not None)


def check_public_host(host: str, settings: Any, field: str) -> None:
    """Refuse hosts resolving to loopback/private/link-local/reserved addresses (unless allowed)."""
    if settings.allow_private_urls:
        return
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError as exc:
        raise InvalidRequest(f"'{field}': cannot resolve host '{host}'.", param=field) from exc
    for info in infos:
        addr = ipaddress.ip_address(info[4][0])
        if (addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_reserved or addr.is_multicast
                or addr.is_unspecified):
            raise InvalidRequest(f"'{field}': URL points to a non-public address; not allowed.", param=field)


def fetch_url(url: str, field: str, settings: Any) -> bytes:
    """GET an http(s) URL with every redirect re-checked and the body size bounded."""
    import httpx

    limit = settings.max_body_bytes
    for _ in range(MAX_REDIRECTS + 1):
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise InvalidRequest(f"'{field}': only http(s) URLs can be fetched.", param=field)
        check_public_host(parsed.hostname, settings, field)
        try:
            with httpx.stream("GET", url, follow_redirects=False, timeout=10.0) as response:
                if response.is_redirect:
                    url = urllib.parse.urljoin(url, response.headers.get("location", ""))
                    continue
                if response.status_code != 200:
                    raise InvalidRequest(f"'{field}': fetching the URL gave HTTP {response.status_code}.",
                                         param=field)
                chunks, size = [], 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise InvalidRequest(f"'{field}': the URL's content is too large.", param=field)
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.HTTPError as exc:
            raise InvalidRequest(f"'{field}': fetching the URL failed ({type(exc).__name__}).", param=field) from exc
    raise InvalidRequest(f"'{field}': too many redirects.", param=field)


def load_media_bytes(value: str | bytes, field: str, settings: Any) -> bytes:
    """Raw bytes of a media input: bytes as given, or a media string resolved by API.md's rules."""
    if isinstance(value, bytes | bytearray):
        if not value:
            raise InvalidRequest(f"'{field}' is empty.", param=field)
        return bytes(value)
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"'{field}' must be a non-empty string.", param=field)
    value = value.strip()
    if value.startswith("data:"):
        return parse_data_url(value, field)
    path = _media_path(value, settings)
    if path is not None:
        return path.read_bytes()
    if re.match(r"^https?://", value, re.IGNORECASE):
        if not settings.allow_url_fetch:
            raise InvalidRequest(f"'{field}': fetching URLs is disabled on this server "
                                 "(UNIVERSAL_RUNTIME_ALLOW_URL_FETCH=1 enables it).", param=field)
        return fetch_url(value, field, settings)
    try:
        return decode_base64(value, field)
    except InvalidRequest:
        if _looks_like_path(value):
            raise InvalidRequest(f"'{field}': server paths are accepted only inside the configured media "
                                 "directories (UNIVERSAL_RUNTIME_MEDIA_DIRS), and the file must exist.",
                                 param=field) from None
        raise


def decode_image(data: bytes, field: str, settings: Any, mode: str = "RGB") -> Image.Image:
    """Decode image bytes: pixel limit, EXIF orientation, then conversion to `mode` (RGB, RGBA or L)."""
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    limit = settings.max_image_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > limit:
                raise InvalidRequest(f"'{field}': image is {width}x{height}, over the limit of {limit} pixels.",
                                     param=field)
            img.load()
    except InvalidRequest:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidRequest(f"'{field}': image is too large (decompression bomb guard).", param=field) from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InvalidRequest(f"'{field}' could not be decoded as an image.", param=field) from exc
    img = ImageOps.exif_transpose(img)
    if mode == "RGBA":
        return img.convert("RGBA")
    if mode == "L":
        return img.convert("L")
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(value: str | bytes, field: str, settings: Any, mode: str = "RGB") -> Image.Image:
    """A media string or uploaded bytes -> a PIL image in `mode`. Blocking: call it off the event loop."""
    try:
        return decode_image(load_media_bytes(value, field, settings), field, settings, mode)
    except InvalidRequest:
        if isinstance(value, str) and _looks_like_path(value.strip()) and _media_path(value.strip(), settings) is None:
            raise InvalidRequest(f"'{field}': server paths are accepted only inside the configured media "
                                 "directories (UNIVERSAL_RUNTIME_MEDIA_DIRS), and the file must exist.",
                                 param=field) from None
        raise


def has_alpha(img: Image.Image) -> bool:
    """True when the image carries a meaningful alpha channel (some pixel not fully opaque)."""
    if img.mode not in ("RGBA", "LA", "PA"):
        return False
    low, _ = img.getchannel("A").getextrema()
    return low < 255
