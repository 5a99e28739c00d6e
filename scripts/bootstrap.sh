#!/usr/bin/env bash
# Create/refresh .venv with the pinned dependencies (constraints.txt pins torch 2.13.0, the CPU wheel).
# Re-installs only when pyproject.toml, setup.py or constraints.txt changed since the last run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=.venv/.wmtp-bootstrap
sha256() { if command -v sha256sum >/dev/null; then sha256sum; else shasum -a 256; fi; }  # macOS: shasum
want=$(cat pyproject.toml setup.py constraints.txt | sha256 | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "bootstrap: installing weighted-mtp and its pinned dependencies into .venv" >&2
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
constraints=constraints.txt
if [ "$(uname -s)" = Darwin ]; then
  # PyPI's macOS torch wheel is the CPU + MPS build and carries no "+cpu" local version.
  constraints=.venv/constraints-macos.txt
  sed 's/^torch==\(.*\)+cpu$/torch==\1/' constraints.txt > "$constraints"
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c "$constraints" torch==2.13.0
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c "$constraints" -e '.[dev]'
echo "$want" > "$stamp"
