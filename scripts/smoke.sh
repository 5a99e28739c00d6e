#!/usr/bin/env bash
# The main job on the embedded default: the `smoke` experiment end to end on CPU —
# critic → verifiable, baseline, rho1 on the micro model and the smoke dataset, tracked in the
# local MLflow store (storage/mlflow). Builds the micro model and the smoke dataset once.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
wmtp=.venv/bin/wmtp
[ -d storage/models_v2/micro-mtp ] || $wmtp model micro --out storage/models_v2
[ -f storage/datasets_v2/smoke/processed/train.jsonl ] ||
  $wmtp data prepare smoke --out storage/datasets_v2/smoke --tokenizer storage/models_v2/micro-mtp
run_dir=storage/checkpoints/smoke-$(date +%Y%m%d-%H%M%S)
$wmtp train smoke --run-dir "$run_dir" "$@"
if [ -n "${MLFLOW_TRACKING_URI:-}" ]; then
  # The URI may carry credentials (http://user:pw@host): shown redacted, like every URI wmtp prints.
  echo "runs tracked at $(.venv/bin/python -c 'import os; from wmtp.tracking import redact_uri; print(redact_uri(os.environ["MLFLOW_TRACKING_URI"]))')"
else
  echo "runs tracked in $(pwd)/storage/mlflow (mlflow ui --backend-store-uri sqlite:///$(pwd)/storage/mlflow/mlflow.db)"
fi
