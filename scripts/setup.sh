#!/usr/bin/env bash
# Idempotent set-up of .venv: `bash scripts/setup.sh` (server) or `bash scripts/setup.sh test` (+ test tools), or
# `bash scripts/setup.sh ray` (server + ray[serve] at the test lock's versions: docs/scaling.md).
# Installs the exact versions of requirements/{server,test}.lock (made by scripts/lock.sh from pyproject.toml),
# so two fresh clones get the same packages. UNIVERSAL_RUNTIME_LOCK_DIR reads the locks from another folder
# (scripts/lock.sh --latest uses that), UNIVERSAL_RUNTIME_VENV puts the venv elsewhere.
# Fast when nothing changed: a stamp of the lock, pyproject.toml and this script skips pip entirely.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-server}"
EXTRA=""
if [ "$MODE" = "ray" ]; then MODE=server; EXTRA=ray; fi
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
STAMP="$VENV/.setup-$MODE${EXTRA:+-$EXTRA}"
RAY_LOCK="${UNIVERSAL_RUNTIME_LOCK_DIR:-requirements}/test.lock"  # ray's pins live in the test lock
HASH="$(cat pyproject.toml scripts/setup.sh "$LOCK" ${EXTRA:+"$RAY_LOCK"} | sha256sum | cut -d' ' -f1)"
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
# Packages the lock marks `--no-deps` only carry model files (see scripts/lock.py); those marked
# `optional-build` are compiled below; the rest install as locked.
NO_DEPS_RE="^($(sed -n 's/^# no-deps: //p' "$LOCK" | tr ' ' '|'))=="
BUILD_RE="^($(sed -n 's/^# optional-build: //p' "$LOCK" | tr ' ' '|'))=="
"${PIP[@]}" -r <(grep -vE "$NO_DEPS_RE" "$LOCK" | grep -vE "$BUILD_RE")
"${PIP[@]}" --no-deps -r <(grep -E "$NO_DEPS_RE" "$LOCK")

# llama-cpp-python (the llama.cpp engine for GGUF chat models) is compiled from source. Portable flags: no
# -march=native (a native build dies with an illegal instruction on older CPUs), AVX2/FMA/F16C, which every
# x86-64 machine of the last decade has; CUDA when an NVIDIA GPU and nvcc are present; Metal is llama.cpp's
# default on macOS. pip caches the wheel, so only the first set-up pays the build (~6 min on 2 cores).
# A failed build does not stop the set-up: GGUF models then run on the transformers engine.
if grep -qE "$BUILD_RE" "$LOCK"; then
  FLAGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"
  FLAGS="$FLAGS -DGGML_NATIVE=OFF"
  case "$(uname -m)" in
    x86_64|amd64) FLAGS="$FLAGS -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON" ;;
  esac
  if command -v nvidia-smi >/dev/null 2>&1 && command -v nvcc >/dev/null 2>&1; then
    FLAGS="$FLAGS -DGGML_CUDA=ON"
  fi
  echo "[setup] building llama-cpp-python (first time only: pip caches the wheel)"
  if ! CMAKE_ARGS="${CMAKE_ARGS:-$FLAGS}" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}" \
      "${PIP[@]}" --no-deps -r <(grep -E "$BUILD_RE" "$LOCK"); then
    echo "[setup] WARNING: llama-cpp-python did not build (a C++ compiler and cmake are needed);" \
         "GGUF chat models will run on the transformers engine (slower). /health shows llama_cpp.available." >&2
  fi
fi
if [ "$EXTRA" = "ray" ]; then
  echo "[setup] installing ray[serve] as pinned by $RAY_LOCK"
  "${PIP[@]}" -c "$RAY_LOCK" "ray[serve]"
fi
echo "$HASH" > "$STAMP"
echo "[setup] done"
