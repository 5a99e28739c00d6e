"""End-of-stage evaluation: a tiny baseline run with an `eval:` block writes <stage>/eval/ and logs pass@k
to the stage's MLflow run; a rerun of the finished run dir evaluates a stage whose evaluation is missing.
(Specs without `eval:` evaluate nothing: every other end-to-end test runs that way.)"""

from __future__ import annotations

import json
import shutil

import pytest
from mlflow.tracking import MlflowClient

from wmtp.distributed import DistContext
from wmtp.train.config import load_experiment
from wmtp.train.runner import run_experiment

pytestmark = pytest.mark.slow

EVAL = ["eval.benchmark=humaneval", "eval.limit=2", "eval.max_new_tokens=16", "eval.ks=[1]"]
SHORT = ["train.max_steps=2", "train.grad_accum_steps=1", "train.eval_interval=1000", "train.save_interval=1000",
         "data.sampling.n_samples=8"]


def test_stage_with_eval_block_writes_summary_and_logs_pass_at_k(smoke_overrides, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    experiment = load_experiment("baseline", smoke_overrides + SHORT + EVAL)
    assert experiment.stages[0].eval.limit == 2
    [result] = run_experiment(experiment, tmp_path / "run", DistContext())
    eval_dir = result.stage_dir / "eval"
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert summary["model"] == str(result.final) and summary["n_tasks"] == 2 and "pass@1" in summary
    assert summary["config"]["max_new_tokens"] == 16
    assert len((eval_dir / "samples.jsonl").read_text().splitlines()) == 2

    uri = next(o.split("=", 1)[1] for o in smoke_overrides if o.startswith("tracking.uri="))
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("weighted-mtp").experiment_id])
    assert run.data.metrics["eval/humaneval/pass_at_1"] == summary["pass@1"]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "eval/humaneval")} >= {"eval/humaneval/summary.json"}

    # Finished stage, evaluation lost (e.g. preempted while generating): the rerun evaluates it, trains nothing.
    shutil.rmtree(eval_dir)
    assert run_experiment(experiment, tmp_path / "run", DistContext()) == []
    assert json.loads((eval_dir / "summary.json").read_text())["pass@1"] == summary["pass@1"]

