"""`wmtp train EXPERIMENT --stage NAME`: one stage of an experiment in its run dir, through real processes.

The verifiable stage alone needs the critic's final checkpoint in the run dir (one line, before any dir
is made); after `--stage critic` it runs on that critic's value head. `--stage` also reaches the ranks
when `wmtp train` launches torchrun.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from wmtp.train.checkpointing import TRAIN_STATE

pytestmark = pytest.mark.slow

SHORT = [
    "train.max_steps=2",
    "train.log_interval=1",
    "train.eval_interval=2",
    "train.save_interval=1000",
    "data.sampling.n_samples=8",
    "train.batch_size=2",
    "train.grad_accum_steps=1",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def wmtp_train(run_dir, overrides: list[str], *stages: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "wmtp_cli.main", "train", "smoke", "--run-dir", str(run_dir)]
    for stage in stages:
        args += ["--stage", stage]
    for o in overrides:
        args += ["--set", o]
    return subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=600)


def stage_dirs(run_dir) -> list[str]:
    """The stages a run dir holds (its files — lock, MLflow job run id — aside)."""
    return sorted(p.name for p in run_dir.iterdir() if p.is_dir())


TIMINGS = {"tokens_per_s", "tokens_per_s_per_device", "mfu", "memory/peak_gib"}


def numbers(stage_dir) -> list[dict]:
    """metrics.jsonl without the timing- and machine-dependent values."""
    lines = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in m.items() if k not in TIMINGS} for m in lines]


def test_verifiable_alone_needs_the_critic_then_runs_on_its_value_head(smoke_overrides, tmp_path):
    run_dir = tmp_path / "run"
    overrides = smoke_overrides + SHORT

    refused = wmtp_train(run_dir, overrides, "verifiable")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stdout == "" and refused.stderr.strip().splitlines() == [
        f"error: stage verifiable needs the final checkpoint of stage critic in {run_dir / 'critic'} "
        "(run --stage critic first) or td.value_head"
    ]
    assert not run_dir.exists()

    critic = wmtp_train(run_dir, overrides, "critic")
    assert critic.returncode == 0, critic.stdout + critic.stderr
    assert "critic: 2 steps" in critic.stdout and "smoke/verifiable" not in critic.stdout
    assert stage_dirs(run_dir) == ["critic"]

    verifiable = wmtp_train(run_dir, overrides, "verifiable")
    assert verifiable.returncode == 0, verifiable.stdout + verifiable.stderr
    assert "verifiable: 2 steps" in verifiable.stdout
    assert "smoke/critic" not in verifiable.stdout and "critic:" not in verifiable.stdout  # not run, not even skipped
    assert stage_dirs(run_dir) == ["critic", "verifiable"]
    assert (run_dir / "verifiable" / "checkpoints" / "final" / TRAIN_STATE).is_file()

    # On the critic's head: the same numbers as critic → verifiable in one command (CPU, one process:
    # deterministic). Named in reverse: the stages still run in the experiment's order.
    straight_dir = tmp_path / "straight"
    straight = wmtp_train(straight_dir, overrides, "verifiable", "critic")
    assert straight.returncode == 0, straight.stdout + straight.stderr
    assert straight.stdout.index("critic: 2 steps") < straight.stdout.index("verifiable: 2 steps")
    assert stage_dirs(straight_dir) == ["critic", "verifiable"]
    alone, together = numbers(run_dir / "verifiable"), numbers(straight_dir / "verifiable")
    assert any("loss/value" in m for m in alone) and any("val/ce" in m for m in alone)
    assert alone == together


def test_stage_reaches_the_ranks_of_torchrun(smoke_overrides, tmp_path):
    """`wmtp train` launching 2 DDP ranks passes --stage on to `python -m wmtp.train`: only that stage runs."""
    run_dir = tmp_path / "run"
    ddp = ["distributed.strategy=ddp", "distributed.nproc_per_node=2", "data.valid_samples=8"]
    result = wmtp_train(run_dir, smoke_overrides + SHORT + ddp, "baseline")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "launching: torchrun" in result.stdout and "baseline: 2 steps" in result.stdout
    assert stage_dirs(run_dir) == ["baseline"]
