"""Preemption and resume: SIGTERM mid-run saves and exits 0; the resumed run ends bit-exact with a
run that was never interrupted (CPU, one process: same ops in the same order)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from wmtp.model import load_model

pytestmark = pytest.mark.slow


def train_process(overrides, run_dir) -> subprocess.Popen:
    command = [sys.executable, "-m", "wmtp.train", "smoke", "--run-dir", str(run_dir)]
    for o in overrides:
        command += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def wait_for(path, proc, timeout=180):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_sigterm_then_resume_equals_an_uninterrupted_run(smoke_overrides, tmp_path):
    overrides = smoke_overrides + [
        "train.max_steps=12", "train.save_interval=3", "train.eval_interval=4", "train.log_interval=1",
        "train.grad_accum_steps=2", "train.batch_size=2",
    ]
    # Only the verifiable stage is interrupted; critic runs first in both.
    straight = train_process(overrides, tmp_path / "straight")
    assert straight.wait(timeout=600) == 0, straight.stdout.read()

    interrupted_dir = tmp_path / "interrupted"
    proc = train_process(overrides, interrupted_dir)
    wait_for(interrupted_dir / "verifiable" / "checkpoints" / "step_000003", proc)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output
    assert "preempted" in output
    assert not (interrupted_dir / "verifiable" / "checkpoints" / "final").exists()

    resumed = train_process(overrides, interrupted_dir)
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output
    assert "critic: already finished" in output and "resumed verifiable" in output

    for stage in ("critic", "verifiable", "baseline", "rho1"):
        a = load_model(tmp_path / "straight" / stage / "checkpoints" / "final").state_dict()
        b = load_model(interrupted_dir / stage / "checkpoints" / "final").state_dict()
        for name in a:
            assert torch.equal(a[name], b[name]), f"{stage}: {name} differs after resume"
