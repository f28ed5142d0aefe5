#!/usr/bin/env bash
# Set up (idempotent, with test tools) and run the whole offline test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh test
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 OMP_NUM_THREADS=1
exec "${UNIVERSAL_RUNTIME_VENV:-.venv}/bin/python" -m pytest -q "$@"
