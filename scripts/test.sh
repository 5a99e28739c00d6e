#!/usr/bin/env bash
# Run the static checks (scripts/lint.sh), then the whole test suite (slow tests included) in the
# bootstrapped .venv.
# Extra arguments go to pytest. pytest's exit 5 ("no tests collected") is a failure here.
# Tests run in WMTP_TEST_WORKERS pytest-xdist worker processes (default 2: CI's cores; one process leaves
# a core idle whenever a test waits on a subprocess or a server); `-n 0` among the arguments runs them in
# this process instead. worksteal: an idle worker takes tests queued for the other, so neither finishes
# minutes early while the other still works through slow tests.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh || exit 1
bash scripts/lint.sh || exit 1  # static checks: a failure stops CI before any test runs
.venv/bin/python -m pytest -n "${WMTP_TEST_WORKERS:-2}" --dist worksteal "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "test.sh: pytest collected no tests — treating as failure" >&2
  exit 1
fi
exit "$status"
