#!/usr/bin/env bash
# The lock: exact versions for `scripts/setup.sh`, resolved from pyproject.toml's ranges.
#
#   bash scripts/lock.sh            refresh requirements/server.lock and requirements/test.lock to the newest
#                                   versions pyproject.toml allows; then run `bash quick_test.sh` and commit the
#                                   locks only with the suite green on them.
#   bash scripts/lock.sh --keep     add what is new in pyproject.toml, keeping every version already locked
#   bash scripts/lock.sh --latest   early warning, changes nothing in the repo: resolve the newest allowed
#                                   versions into a scratch folder, build a scratch venv from them and run the
#                                   whole suite there (extra arguments go to pytest). Prints what differs
#                                   from the lock, then the suite's result.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

if [ "${1:-}" != "--latest" ]; then
  exec "$PY" scripts/lock.py requirements "$@"
fi
shift
SCRATCH="${UNIVERSAL_RUNTIME_LATEST_DIR:-$(mktemp -d -t universal-latest.XXXXXX)}"
echo "[lock] scratch folder $SCRATCH"
"$PY" scripts/lock.py "$SCRATCH/locks"
echo "[lock] newer than requirements/test.lock:"
diff <(grep -v '^#' requirements/test.lock) <(grep -v '^#' "$SCRATCH/locks/test.lock") | sed -n 's/^> /  /p' || true
UNIVERSAL_RUNTIME_LOCK_DIR="$SCRATCH/locks" UNIVERSAL_RUNTIME_VENV="$SCRATCH/venv" bash quick_test.sh "$@"
