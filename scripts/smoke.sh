#!/usr/bin/env bash
# The main job on the embedded default: build the micro model (once) and train it for a few steps on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
models=storage/models_v2
[ -d "$models/micro-mtp" ] || .venv/bin/wmtp model micro --out "$models"
.venv/bin/wmtp model try-step "$models/micro-mtp"
