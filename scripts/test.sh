#!/usr/bin/env bash
# Run the whole test suite (slow tests included) in the bootstrapped .venv.
# Extra arguments go to pytest. pytest's exit 5 ("no tests collected") is a failure here.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh || exit 1
.venv/bin/python -m pytest "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "test.sh: pytest collected no tests — treating as failure" >&2
  exit 1
fi
exit "$status"
