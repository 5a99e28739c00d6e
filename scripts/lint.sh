#!/usr/bin/env bash
# Static checks, run by scripts/test.sh before the tests; also runs alone: `bash scripts/lint.sh`.
# Every step runs even when an earlier one fails (one CI run shows every problem); the script fails if any did.
# A new check is one more `step` line.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh || exit 1

failed=""
step() {  # step NAME COMMAND…
  local name=$1
  shift
  "$@" || failed="$failed${failed:+, }$name"
}

# Import layers and cycles: the contracts under [tool.importlinter] in pyproject.toml (docs/architecture.md,
# "Layers"). --no-cache: the graph takes under a second, and CI leaves no cache folder behind.
step "import layers (lint-imports)" .venv/bin/lint-imports --no-cache --no-logo
# Lint and format: [tool.ruff] in pyproject.toml. To fix what it reports: .venv/bin/ruff check --fix . and
# .venv/bin/ruff format . (the tree is kept clean under both).
step "lint (ruff check)" .venv/bin/ruff check --no-cache --quiet .
step "format (ruff format --check)" .venv/bin/ruff format --no-cache --check --quiet .

if [ -n "$failed" ]; then
  echo "lint.sh: failed: $failed" >&2
  exit 1
fi
