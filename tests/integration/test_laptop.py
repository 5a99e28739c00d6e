"""Laptop mode end to end on CPU: `wmtp train verifiable --micro` in a fresh directory builds the micro
model, the smoke dataset and its small splits, then runs the experiment's own stages (critic → verifiable
on the critic's value head) and evaluates; and `model.dtype: float16` trains with loss scaling."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread", "no_tracking_env")]


def test_micro_on_a_fresh_directory_builds_what_is_missing_and_runs_verifiable(tmp_path, monkeypatch):
    from wmtp.train import laptop
    from wmtp.train.config import load_experiment
    from wmtp_cli.main import app

    monkeypatch.chdir(tmp_path)  # nothing here: no storage/, no jobs/
    # The smoke dataset from 16 HumanEval problems rather than 164: the same code, a minute less.
    monkeypatch.setattr(laptop, "SMOKE_PROBLEMS", 16)
    args = [
        "train",
        "verifiable",
        "--micro",
        "--run-dir",
        "run",
        "--set",
        "train.max_steps=2",
        "--set",
        "eval.limit=1",
        "--set",
        "eval.max_new_tokens=4",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    built = [line for line in result.output.splitlines() if line.startswith("--micro: ")]
    assert built == [
        "--micro: storage/models_v2/micro-mtp is missing: building the micro model pair "
        "(wmtp model micro --out storage/models_v2)",
        "--micro: storage/datasets_v2/smoke is missing: preparing the smoke dataset (wmtp data prepare smoke; "
        "runs every HumanEval test once, a minute or two)",
        "--micro: storage/datasets_v2/smoke/processed/train_small.jsonl is missing: writing the small splits "
        "(wmtp data small storage/datasets_v2/smoke/processed)",
    ]
    processed = Path("storage/datasets_v2/smoke/processed")
    assert {p.name for p in processed.glob("*_small.jsonl")} == {"train_small.jsonl", "valid_small.jsonl"}
    critic, verifiable = Path("run/critic"), Path("run/verifiable")
    assert (critic / "checkpoints/final/value_head.safetensors").is_file()
    assert "critic: 2 steps" in result.output and "verifiable: 2 steps" in result.output
    spec = (verifiable / "spec.yaml").read_text()
    assert "path: storage/models_v2/micro-mtp" in spec and "split_variant: small" in spec
    summary = json.loads((verifiable / "eval/summary.json").read_text())
    assert summary["n_tasks"] == 1 and "pass@1" in summary
    # Run again, nothing is missing: nothing is built.
    lines = []
    laptop.build_missing(load_experiment("verifiable", preset=["micro"]), log=lines.append)
    assert lines == []


def test_float16_trains_with_loss_scaling(baseline_overrides, tmp_path):
    from wmtp.distributed import DistContext
    from wmtp.train.config import load_experiment
    from wmtp.train.loop import Trainer
    from wmtp.train.runner import run_experiment

    overrides = baseline_overrides + [
        "model.dtype=float16",
        "distributed.strategy=none",
        "train.max_steps=2",
        "train.batch_size=2",
        "train.grad_accum_steps=1",
        "data.max_length=64",
        "data.valid_samples=2",
        "eval=null",
    ]
    experiment = load_experiment("baseline", overrides)
    trainer = Trainer(experiment.stages[0], tmp_path / "probe", DistContext(), {})
    assert trainer.autocast.fast_dtype == torch.float16 and trainer.scaler is not None
    assert all(p.dtype == torch.float32 for p in trainer.module.parameters())  # fp32 master weights
    [result] = run_experiment(experiment, tmp_path / "run", DistContext())
    assert result.steps == 2 and math.isfinite(result.last_metrics["loss/total"])
    assert math.isfinite(result.last_metrics["grad_norm"])  # reported unscaled (the scaler unscales first)
