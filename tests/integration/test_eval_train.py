"""End-of-stage evaluation: a tiny baseline run with an `eval:` block writes <stage>/eval/ and logs pass@k
to the stage's MLflow run; a rerun of the finished run dir evaluates a stage whose evaluation is missing;
`wmtp eval run STAGE_DIR` logs to that stage's run (and refuses another run's MLFLOW_RUN_ID).
(The experiments evaluate HumanEval by default; the other end-to-end tests cut it to 2 problems and 8
tokens in `baseline_overrides`.)"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from mlflow.tracking import MlflowClient

from wmtp.distributed import DistContext
from wmtp.train.config import load_experiment
from wmtp.train.runner import run_experiment

pytestmark = pytest.mark.slow

EVAL = ["eval.benchmark=humaneval", "eval.limit=2", "eval.max_new_tokens=16", "eval.ks=[1]"]
SHORT = [
    "train.max_steps=2",
    "train.grad_accum_steps=1",
    "train.eval_interval=1000",
    "train.save_interval=1000",
    "data.sampling.n_samples=8",
]


def test_stage_with_eval_block_writes_summary_and_logs_pass_at_k(baseline_overrides, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    experiment = load_experiment("baseline", baseline_overrides + SHORT + EVAL)
    assert experiment.stages[0].eval.limit == 2
    [result] = run_experiment(experiment, tmp_path / "run", DistContext())
    eval_dir = result.stage_dir / "eval"
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert summary["model"] == str(result.final) and summary["n_tasks"] == 2 and "pass@1" in summary
    assert summary["config"]["max_new_tokens"] == 16
    low, high = summary["ci95"]["pass@1"]
    assert low <= summary["pass@1"] <= high and isinstance(summary["exact_match"], float)
    assert len((eval_dir / "samples.jsonl").read_text().splitlines()) == 2

    uri = next(o.split("=", 1)[1] for o in baseline_overrides if o.startswith("tracking.uri="))
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("weighted-mtp").experiment_id], "tags.stage = 'baseline'")
    assert run.data.metrics["eval/humaneval/pass_at_1"] == summary["pass@1"]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "eval/humaneval")} >= {"eval/humaneval/summary.json"}

    # Finished stage, evaluation lost (e.g. preempted while generating): the rerun evaluates it, trains nothing.
    shutil.rmtree(eval_dir)
    assert run_experiment(experiment, tmp_path / "run", DistContext()) == []
    assert json.loads((eval_dir / "summary.json").read_text())["pass@1"] == summary["pass@1"]


def test_mbpp_data_evaluates_mbpp_as_well(baseline_overrides, tmp_path, monkeypatch):
    from tests.unit.test_eval_benchmarks import MBPP_ROWS

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = tmp_path / "mbpp.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in MBPP_ROWS))
    experiment = load_experiment("baseline", baseline_overrides + SHORT + ["eval.limit=1", f"eval.mbpp_data={data}"])
    [result] = run_experiment(experiment, tmp_path / "run", DistContext())
    assert json.loads((result.stage_dir / "eval" / "summary.json").read_text())["benchmark"] == "humaneval"
    mbpp = json.loads((result.stage_dir / "eval" / "mbpp" / "summary.json").read_text())
    assert mbpp["benchmark"] == "mbpp" and mbpp["n_tasks"] == 1 and "exact_match" in mbpp

    uri = next(o.split("=", 1)[1] for o in baseline_overrides if o.startswith("tracking.uri="))
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("weighted-mtp").experiment_id], "tags.stage = 'baseline'")
    assert run.data.metrics["eval/mbpp/pass_at_1"] == mbpp["pass@1"] and "eval/humaneval/pass_at_1" in run.data.metrics
    assert run.data.params["eval_run.mbpp.limit"] == "1"


def train_stage_without_eval(baseline_overrides, tmp_path):
    """A finished baseline stage dir (no end-of-stage evaluation) and the test's MLflow client."""
    experiment = load_experiment("baseline", baseline_overrides + SHORT + ["eval=null"])
    [result] = run_experiment(experiment, tmp_path / "run", DistContext())
    uri = next(o.split("=", 1)[1] for o in baseline_overrides if o.startswith("tracking.uri="))
    return result.stage_dir, MlflowClient(uri)


def eval_cli(*args):
    from typer.testing import CliRunner

    from wmtp_cli.main import app

    return CliRunner().invoke(app, ["eval", "run", *map(str, args)])


def test_eval_run_on_a_stage_dir_logs_to_that_stages_run(baseline_overrides, tmp_path, no_tracking_env):
    stage_dir, client = train_stage_without_eval(baseline_overrides, tmp_path)
    run_id = (stage_dir / "mlflow_run_id").read_text().strip()
    result = eval_cli(
        stage_dir, "-b", "humaneval", "--limit", 2, "--max-new-tokens", 8, "--workers", 1, "--out", tmp_path / "out"
    )
    assert result.exit_code == 0, result.output
    assert f"mlflow run: {run_id}" in result.output and "95% CI" in result.output

    runs = client.search_runs([client.get_experiment_by_name("weighted-mtp").experiment_id])
    [run] = [r for r in runs if "stage" in r.data.tags]
    assert len(runs) == 2 and run.info.run_id == run_id  # no run of its own: the stage's (and the job's run)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert run.data.metrics["eval/humaneval/pass_at_1"] == summary["pass@1"]
    assert run.data.metrics["eval/humaneval/pass_at_1_ci95_high"] == summary["ci95"]["pass@1"][1]
    assert run.data.metrics["eval/humaneval/exact_match"] == summary["exact_match"]
    params = run.data.params
    assert params["eval_run.humaneval.limit"] == "2" and params["eval_run.humaneval.max_new_tokens"] == "8"
    assert params["eval_run.humaneval.temperature"] == "0.0"


def test_eval_run_on_a_stage_dir_refuses_another_runs_id(baseline_overrides, tmp_path, no_tracking_env, monkeypatch):
    stage_dir, _ = train_stage_without_eval(baseline_overrides, tmp_path)
    monkeypatch.setenv("MLFLOW_RUN_ID", "0123456789abcdef")
    result = eval_cli(stage_dir, "-b", "humaneval", "--limit", 1, "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "MLFLOW_RUN_ID=0123456789abcdef is not the run of stage" in result.output
    assert not (tmp_path / "out").exists()  # refused before anything was generated

    # spec.yaml keeps a credentialed URI redacted: without the matching MLFLOW_TRACKING_URI it is refused.
    monkeypatch.delenv("MLFLOW_RUN_ID")
    spec = stage_dir / "spec.yaml"
    doc = yaml.safe_load(spec.read_text())
    doc["tracking"]["uri"] = "https://***@mlflow.example/"
    spec.write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://me:secret@other.example/")
    result = eval_cli(stage_dir, "-b", "humaneval", "--limit", 1, "--out", tmp_path / "out")
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "tracking.uri is stored redacted" in result.output and "secret" not in result.output
