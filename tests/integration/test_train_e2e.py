"""Every experiment end to end on the micro model (CPU, one process), through the real entry point."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from wmtp.distributed import DistContext
from wmtp.model import load_model
from wmtp.train.config import load_experiment
from wmtp.train.runner import run_experiment

pytestmark = pytest.mark.slow


def run(overrides, run_dir, spec="smoke"):
    experiment = load_experiment(spec, overrides)
    return run_experiment(experiment, run_dir, DistContext())


def test_smoke_runs_all_four_stages_and_chains_the_critic(smoke_overrides, tmp_path):
    results = run(
        smoke_overrides + ["train.max_steps=3", "train.eval_interval=2", "train.save_interval=2"], tmp_path / "run"
    )
    assert [r.stage_dir.name for r in results] == ["critic", "verifiable", "baseline", "rho1"]
    for result in results:
        assert result.steps == 3 and result.final.is_dir()
        load_model(result.final)  # every final checkpoint is a loadable model dir
        assert (result.stage_dir / "spec.yaml").is_file()
        assert (result.stage_dir / "plots" / "loss_per_head.png").is_file()
    critic, verifiable = results[0], results[1]
    critic_head = load_file(critic.final / "value_head.safetensors")
    assert set(critic_head) == {"proj.weight", "proj.bias"}
    # The critic froze the policy: its weights are the initial ones.
    before, after = load_model(smoke_overrides[0].split("=", 1)[1]), load_model(critic.final)
    assert all(torch.equal(a, b) for a, b in zip(before.state_dict().values(), after.state_dict().values()))
    assert "weight/mean" in verifiable.last_metrics and "td/mean" in verifiable.last_metrics
    assert "rho1/kept_fraction" in results[3].last_metrics  # smoke's rho1 stage is tokenskip
    assert (verifiable.stage_dir / "plots" / "token_weights.png").is_file()
    # Every stage but the critic (policy frozen) evaluated HumanEval at the end, without an eval: block.
    assert not (critic.stage_dir / "eval").exists()
    for result in results[1:]:
        summary = json.loads((result.stage_dir / "eval" / "summary.json").read_text())
        assert summary["benchmark"] == "humaneval" and summary["config"]["temperature"] == 0.0
        assert "pass@1" in summary and len(summary["ci95"]["pass@1"]) == 2 and "exact_match" in summary


def test_loss_falls_on_a_tiny_repeated_dataset(baseline_overrides, tmp_path):
    overrides = baseline_overrides + [
        "train.grad_accum_steps=1",
        "train.max_steps=25",
        "train.num_epochs=50",
        "train.lr=3e-3",
        "train.warmup_steps=0",
        "train.schedule=constant",
        "train.log_interval=1",
        "train.eval_interval=1000",
        "train.save_interval=1000",
        "data.sampling.n_samples=8",
    ]
    [result] = run(overrides, tmp_path / "run", spec="baseline")
    assert result.steps == 25
    history = json.loads((result.stage_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert result.last_metrics["loss/total"] < 0.7 * history["loss/total"]


def test_a_finished_run_dir_is_not_trained_again(baseline_overrides, tmp_path):
    overrides = baseline_overrides + ["train.max_steps=2", "train.grad_accum_steps=1"]
    run(overrides, tmp_path / "run", spec="baseline")
    assert run(overrides, tmp_path / "run", spec="baseline") == []
