"""GGUF files are converted (de-quantized) by transformers on every load, which is slow; the converted model
is saved once under `$UNIVERSAL_RUNTIME_CACHE_DIR/converted/<hash>` (default `~/.cache/universal-runtime`)
and later loads read that folder."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

logger = logging.getLogger("universal_runtime.gguf")
MARKER = "universal-runtime-converted.json"


def cache_root() -> Path:
    return Path(os.environ.get("UNIVERSAL_RUNTIME_CACHE_DIR") or "~/.cache/universal-runtime").expanduser()


def converted_dir(gguf_path: Path, dtype: str) -> Path:
    """Where the converted copy of this exact file (path, size, mtime) in this dtype lives."""
    st = gguf_path.stat()
    raw = f"{gguf_path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{dtype}"
    return cache_root() / "converted" / hashlib.sha256(raw.encode()).hexdigest()[:24]


def cached(gguf_path: Path, dtype: str) -> Path | None:
    """The converted folder if a complete one exists."""
    folder = converted_dir(gguf_path, dtype)
    return folder if (folder / MARKER).exists() else None


def save_converted(model: Any, tokenizer: Any, gguf_path: Path, dtype: str) -> Path | None:
    """Save a model loaded from GGUF as a plain transformers folder (atomically); None when it fails."""
    folder = converted_dir(gguf_path, dtype)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    try:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        # The GGUF quantizer only marks where the weights came from: they are plain tensors now.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps({"source": str(gguf_path.resolve()), "dtype": dtype}))
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        return folder
    except Exception as exc:  # noqa: BLE001 - a read-only or full disk only costs speed
        logger.warning("could not cache the converted GGUF model in %s: %s", folder, exc)
        shutil.rmtree(tmp, ignore_errors=True)
        return None


def tokenizer_for(gguf_path: Path) -> Any:
    """The transformers tokenizer (and chat template) of a GGUF file; built from the GGUF metadata once, then
    read from the conversion cache."""
    from transformers import AutoTokenizer

    folder = converted_dir(gguf_path, "tokenizer")
    if (folder / MARKER).exists():
        return AutoTokenizer.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    try:
        tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps({"source": str(gguf_path.resolve()), "tokenizer": True}))
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    except Exception as exc:  # noqa: BLE001 - a read-only or full disk only costs speed
        logger.warning("could not cache the GGUF tokenizer in %s: %s", folder, exc)
        shutil.rmtree(tmp, ignore_errors=True)
    return tokenizer
