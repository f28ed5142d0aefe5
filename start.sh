#!/usr/bin/env bash
# Set up (idempotent) and start the Universal Runtime on 127.0.0.1:11540. Extra arguments go to server.py.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh server
exec .venv/bin/python server.py "$@"
