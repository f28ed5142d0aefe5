"""Generated images on disk: PNG files with names of 128 random bits, and strict lookup for serving them.

Nothing from the request (prompt, model id, client-chosen names) ever reaches a path: a name is
`secrets.token_hex(16) + ".png"`, and lookups accept only names of exactly that shape.
"""

from __future__ import annotations

import io
import os
import re
import secrets
from pathlib import Path
from typing import Any

NAME = re.compile(r"[0-9a-f]{32}\.png")
FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}


def encode(image: Any, media_type: str = "image/png") -> bytes:
    """A PIL image as PNG, JPEG or WEBP bytes."""
    fmt = FORMATS[media_type]
    buf = io.BytesIO()
    if fmt == "PNG":
        image.save(buf, format="PNG")
    else:
        image.convert("RGB").save(buf, format=fmt, quality=95)
    return buf.getvalue()


class ImageStore:
    """Writes generated PNGs under one folder and resolves served names back to files."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def save(self, image: Any) -> str:
        """Write `image` as PNG under a fresh random name (atomically) and return the name."""
        self.root.mkdir(parents=True, exist_ok=True)
        data = encode(image)
        name = secrets.token_hex(16) + ".png"
        tmp = self.root / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, self.root / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return name

    def path_for(self, name: str) -> Path | None:
        """The file for a served name, or None when the name is malformed or no such regular file exists."""
        if not isinstance(name, str) or not NAME.fullmatch(name):
            return None
        path = self.root / name
        try:
            if path.is_symlink() or not path.is_file():
                return None
        except OSError:
            return None
        return path
