"""Preemption and resume: SIGTERM mid-run saves and exits 0; the resumed run ends bit-exact with a
run that was never interrupted (CPU, one process: same ops in the same order), validations included."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from wmtp.model import load_model

pytestmark = pytest.mark.slow

# `python -m wmtp.train` whose process receives a real SIGTERM while the verifiable stage computes step
# SIGTERM_AT (the handler sets the flag the loop checks after that step's validation and checkpoint).
SIGTERM_DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    from wmtp.train import __main__ as entry, loop

    at = int(os.environ["SIGTERM_AT"])
    step = loop.Trainer.optimizer_step

    def optimizer_step(self, window):
        metrics = step(self, window)
        if self.spec.stage == "verifiable" and self.state["step"] + 1 == at:
            os.kill(os.getpid(), signal.SIGTERM)
        return metrics

    loop.Trainer.optimizer_step = optimizer_step
    sys.exit(entry.main())
    """
)


def train_process(overrides, run_dir, sigterm_at=None) -> subprocess.Popen:
    entry = ["-c", SIGTERM_DRIVER] if sigterm_at else ["-m", "wmtp.train"]
    command = [sys.executable, *entry, "smoke", "--run-dir", str(run_dir)]
    for o in overrides:
        command += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SIGTERM_AT": str(sigterm_at or "")}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def validations(stage_dir):
    """The validation entries of metrics.jsonl, in order."""
    lines = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    return [m for m in lines if any(k.startswith("val/") for k in m)]


def test_sigterm_on_an_eval_step_then_resume_equals_an_uninterrupted_run(smoke_overrides, tmp_path):
    overrides = smoke_overrides + [
        "train.max_steps=12", "train.save_interval=3", "train.eval_interval=4", "train.log_interval=1",
        "train.grad_accum_steps=2", "train.batch_size=2",
    ]
    # Only the verifiable stage is interrupted (at step 4, an eval step); critic runs first in both.
    straight = train_process(overrides, tmp_path / "straight")
    assert straight.wait(timeout=600) == 0, straight.stdout.read()

    interrupted_dir = tmp_path / "interrupted"
    proc = train_process(overrides, interrupted_dir, sigterm_at=4)
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output
    assert "preempted: saved step 4" in output
    assert not (interrupted_dir / "verifiable" / "checkpoints" / "final").exists()

    resumed = train_process(overrides, interrupted_dir)
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output
    assert "critic: already finished" in output and "resumed verifiable" in output

    # The validation of step 4 ran before the save: same entries, same values, same best checkpoint.
    expected = validations(tmp_path / "straight" / "verifiable")
    assert [m["step"] for m in expected][:2] == [4, 8]  # the stage has 8 steps on the tiny dataset
    assert validations(interrupted_dir / "verifiable") == expected
    for stage in ("critic", "verifiable", "baseline", "rho1"):
        for checkpoint in ("final", "best"):
            a = load_model(tmp_path / "straight" / stage / "checkpoints" / checkpoint).state_dict()
            b = load_model(interrupted_dir / stage / "checkpoints" / checkpoint).state_dict()
            for name in a:
                assert torch.equal(a[name], b[name]), f"{stage}/{checkpoint}: {name} differs after resume"


def test_sigterm_to_wmtp_train_reaches_torchrun_workers_which_save(smoke_overrides, tmp_path):
    """`wmtp train` with 2 DDP processes: SIGTERM to it → the workers save a step checkpoint → exit 0."""
    run_dir = tmp_path / "run"
    overrides = smoke_overrides + [
        "distributed.strategy=ddp", "distributed.nproc_per_node=2", "distributed.preemption_grace_s=120",
        "train.batch_size=1", "train.grad_accum_steps=1", "train.num_epochs=100", "train.max_steps=1000",
        "train.log_interval=1", "train.eval_interval=1000", "train.save_interval=1000",
    ]
    command = [sys.executable, "-m", "cli.main", "train", "baseline", "--run-dir", str(run_dir)]
    for o in overrides:
        command += ["--set", o]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    metrics = run_dir / "baseline" / "metrics.jsonl"
    deadline = time.time() + 240
    while not metrics.exists():  # training has started: both workers are inside the loop
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else ""
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=240)[0]
    assert proc.returncode == 0, output
    assert "preempted: saved step" in output
    checkpoints = sorted((run_dir / "baseline" / "checkpoints").glob("step_*"))
    assert checkpoints and (checkpoints[-1] / "train_state.pt").is_file()
    assert not (run_dir / "baseline" / "checkpoints" / "final").exists()
