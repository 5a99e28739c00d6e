"""`wmtp compare` on a real run dir (the four smoke stages, 4 steps each) and on its MLflow store."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from wmtp_cli.main import app

pytestmark = pytest.mark.slow


def metrics(stage_dir):
    return [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]


def values(entries, key):
    return [e[key] for e in entries if key in e]


def test_compare_reports_the_numbers_of_the_run_dir_and_of_mlflow(smoke_overrides, tmp_path, one_torch_thread):
    from wmtp.distributed import DistContext
    from wmtp.train.config import load_experiment
    from wmtp.train.runner import run_experiment

    overrides = smoke_overrides + [
        "train.max_steps=4",
        "train.eval_interval=2",
        "train.save_interval=2",
        "train.log_interval=1",
        "tracking.experiment=wmtp-compare",
    ]
    run_dir = tmp_path / "run"
    run_experiment(load_experiment("smoke", overrides), run_dir, DistContext())

    result = CliRunner().invoke(app, ["compare", str(run_dir), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    printed = result.output.splitlines()
    for stage in ("critic", "verifiable", "baseline", "rho1"):
        assert any(line.startswith(f"run/{stage} ") for line in printed), result.output

    rows = {r["stage"]: r for r in csv.DictReader(open(tmp_path / "report" / "compare.csv"))}
    assert set(rows) == {"run/critic", "run/verifiable", "run/baseline", "run/rho1"}
    for stage, r in rows.items():
        entries = metrics(run_dir / stage.split("/")[1])
        assert int(r["steps"]) == max(e["step"] for e in entries) == 4
        # The loop's running token count: logged at every log step, growing, the last one reported.
        tokens = values(entries, "tokens")
        assert len(tokens) == 4 and tokens == sorted(tokens) and tokens[0] > 0
        assert float(r["tokens"]) == tokens[-1]
        assert float(r["tokens/s"]) == pytest.approx(sum(values(entries, "tokens_per_s")) / 4)
        for key in ("val/ce", "val/ce/head_1", "val/ce/head_4", "val/loss"):
            logged = values(entries, key)
            if not logged:  # the critic logs no cross-entropy
                assert r[f"{key} best"] == r[f"{key} final"] == "", stage
                continue
            assert float(r[f"{key} best"]) == min(logged) and float(r[f"{key} final"]) == logged[-1]
    # pass@1 and its interval: the stage's own end-of-stage evaluation (eval/summary.json), none for the critic.
    assert rows["run/critic"]["pass@1"] == ""
    for stage in ("verifiable", "baseline", "rho1"):
        summary = json.loads((run_dir / stage / "eval" / "summary.json").read_text())
        r = rows[f"run/{stage}"]
        assert float(r["pass@1"]) == summary["pass@1"]
        assert [float(r["pass@1 ci95 low"]), float(r["pass@1 ci95 high"])] == summary["ci95"]["pass@1"]
        assert any(line.startswith(f"run/{stage} ") and f"{summary['pass@1']:.4f} [" in line for line in printed)
    assert rows["run/critic"]["early stopping"] == "ran to the end"  # on by default for the critic only
    assert rows["run/baseline"]["early stopping"] == "off"

    report = (tmp_path / "report" / "report.md").read_text()
    baseline_ce = values(metrics(run_dir / "baseline"), "val/ce")
    assert "| run/baseline | 4 | " in report and f"{min(baseline_ce):.4f}" in report
    html = (tmp_path / "report" / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') >= 3  # val/ce vs step, vs tokens, verifiable's weights
    assert 'src="val_ce' not in html and "run/verifiable" in html

    # The same numbers from the MLflow store the run logged to (the job's own run, holding the four, left out).
    uri = next(o for o in smoke_overrides if o.startswith("tracking.uri=")).split("=", 1)[1]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("wmtp-compare").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["run", "run/baseline", "run/critic", "run/rho1", "run/verifiable"]
    result = CliRunner().invoke(
        app,
        [
            "compare",
            "--mlflow",
            "wmtp-compare",
            "--tracking-uri",
            uri,
            "--filter",
            "tags.stage != 'critic'",
            "--out",
            str(tmp_path / "from-mlflow"),
        ],
    )
    assert result.exit_code == 0, result.output
    from_mlflow = list(csv.DictReader(open(tmp_path / "from-mlflow" / "compare.csv")))
    assert [r["stage"].split(" ")[0] for r in from_mlflow] == ["smoke/verifiable", "smoke/baseline", "smoke/rho1"]
    for r in from_mlflow:
        local = rows[f"run/{r['stage'].split(' ')[0].split('/')[1]}"]
        for column in ("steps", "tokens", "val/ce best", "val/ce final", "val/ce/head_2 final", "val/loss final"):
            assert float(r[column]) == pytest.approx(float(local[column]), rel=1e-6), column
    assert 'src="data:image/png;base64,' in (tmp_path / "from-mlflow" / "report.html").read_text()


def test_compare_refuses_what_is_not_a_run_dir_in_one_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["compare", str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and result.output.strip() == (
        f"error: {tmp_path / 'missing'}: no such directory (expected a run dir or a stage dir holding metrics.jsonl)"
    )
    stage = tmp_path / "run" / "baseline"
    stage.mkdir(parents=True)
    (stage / "metrics.jsonl").write_text('{"step": 1, "loss/total": 1.0}\n{"step": 2, "loss/tot\n')
    result = runner.invoke(app, ["compare", str(tmp_path / "run"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert result.output.startswith(f"error: {stage / 'metrics.jsonl'}:2: not a JSON object"), result.output
    assert not (tmp_path / "out").exists()


def test_compare_shows_pass_at_k_with_its_interval_and_the_early_stop(tmp_path):
    """From eval/summary.json (its `ci95`) and metrics.jsonl's early_stopping/reason, no training needed."""
    stage = tmp_path / "run" / "critic"
    (stage / "eval").mkdir(parents=True)
    (stage / "metrics.jsonl").write_text(
        '{"step": 2, "loss/total": 1.0, "tokens": 100.0, "tokens_per_s": 50.0}\n'
        '{"step": 2, "val/loss": 0.7}\n'
        '{"step": 2, "early_stopping/stopped": 1.0, "early_stopping/reason": "loss converged"}\n'
    )
    (stage / "eval" / "summary.json").write_text(
        json.dumps({"benchmark": "humaneval", "pass@1": 0.25, "pass@10": 0.5, "ci95": {"pass@1": [0.125, 0.375]}})
    )
    result = CliRunner().invoke(app, ["compare", str(stage), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    header, line = result.output.splitlines()[:2]
    assert "pass@1 [95% CI]" in header and "pass@10 [95% CI]" in header
    assert "0.2500 [0.125, 0.375]" in line and "0.5000" in line and "stopped at step 2: loss converged" in line
    [r] = csv.DictReader(open(tmp_path / "out" / "compare.csv"))
    assert (r["pass@1"], r["pass@1 ci95 low"], r["pass@1 ci95 high"], r["pass@10 ci95 low"]) == (
        "0.25",
        "0.125",
        "0.375",
        "",
    )
