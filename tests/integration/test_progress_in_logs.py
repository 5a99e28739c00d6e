"""With stdout/stderr piped (a container log, `wmtp logs`, CI), the long commands say what they are
doing while they do it: plain lines, flushed, not a rich bar that prints only when it stops."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen(
        [sys.executable, "-m", "wmtp_cli.main", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_train_prints_a_line_per_logged_step_and_validation_while_it_runs(smoke_overrides, tmp_path):
    overrides = smoke_overrides + [
        "train.max_steps=8",
        "train.log_interval=2",
        "train.eval_interval=4",
        "train.save_interval=1000",
        "train.batch_size=2",
    ]
    proc = start(["train", "smoke", "--run-dir", str(tmp_path / "run"), *(a for o in overrides for a in ("--set", o))])
    first = ""
    while not first.startswith("smoke/critic step "):
        first = proc.stdout.readline()
        assert first, proc.stderr.read()
    still_running = proc.poll() is None  # the line arrived while the run went on, not at its end
    rest, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert still_running
    lines = [first.rstrip("\n"), *rest.splitlines()]
    for stage, monitor in [
        ("critic", "val/loss"),
        ("verifiable", "val/ce"),
        ("baseline", "val/ce"),
        ("rho1", "val/ce"),
    ]:
        steps = [
            line.split()[2]
            for line in lines
            if line.startswith(f"smoke/{stage} step ") and "loss" in line and "validation" not in line
        ]
        assert steps == ["2/8", "4/8", "6/8", "8/8"], (stage, lines)
        validations = [line for line in lines if line.startswith(f"smoke/{stage} step ") and "validation" in line]
        assert [v.split()[2] for v in validations] == ["4/8", "8/8"], (stage, validations)
        assert all(f" validation {monitor} " in v for v in validations)
        assert validations[0].endswith("(new best)")  # the first validation is always the best so far
    example = next(line for line in lines if line.startswith("smoke/baseline step 2/8 "))
    for part in (" epoch ", " loss ", " tokens/s ", " elapsed ", " eta "):
        assert part in example, example


def test_data_prepare_smoke_reports_progress_on_stderr(micro_models, tmp_path):
    proc = start(
        [
            "data",
            "prepare",
            "smoke",
            "--out",
            str(tmp_path / "smoke"),
            "--tokenizer",
            str(micro_models["micro-mtp"]),
            "--limit",
            "10",
        ]
    )
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    lines = err.splitlines()
    assert lines[0] == "smoke: running tests: started of 10"
    assert [line.split(" elapsed")[0] for line in lines[1:-1]] == [
        f"smoke: running tests: {k} of 10 ({10 * k}%)" for k in range(1, 11)
    ]
    assert lines[-1].startswith("smoke: running tests: done in ")
    assert "smoke: prepared splits" in out  # the report stays on stdout
