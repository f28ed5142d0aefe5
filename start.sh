#!/usr/bin/env bash
# Set up (idempotent) and start the Universal Runtime on 127.0.0.1:11540. Extra arguments go to server.py.
# `bash start.sh --ray [config.yaml]`: set up with ray and run deploy/ray/serve.yaml on Ray Serve instead, on a
# local Ray bound to 127.0.0.1 (deploy/ray/run.py; RAY_ADDRESS joins an existing cluster instead).
set -euo pipefail
cd "$(dirname "$0")"
if [ "${1:-}" = "--ray" ]; then
  shift
  bash scripts/setup.sh ray
  exec .venv/bin/python -m deploy.ray.run "$@"
fi
bash scripts/setup.sh server
exec .venv/bin/python server.py "$@"
