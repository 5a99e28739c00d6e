"""One writer per run dir: a second `wmtp train` (or `python -m wmtp.train`) on a live run dir is refused
with one line naming the holder, exit 2, and writes nothing; the first run is unaffected; a lock file left
by a process that is gone is taken over with a warning. Real processes throughout."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient

from wmtp.assets import asset_dir
from wmtp.train.checkpointing import TRAIN_STATE

pytestmark = pytest.mark.slow

# Long enough (on a busy 2-core machine) that the first run is still training while a second process
# starts, loads the spec and checks the inputs (~30 s at ~5 steps per second on the micro model).
LONG = [
    "train.num_epochs=100",
    "train.max_steps=150",
    "train.log_interval=1",
    "train.eval_interval=1000",
    "train.save_interval=5",
    "train.keep_last=1",
    "data.sampling.n_samples=8",
    "train.batch_size=2",
    "train.grad_accum_steps=1",
]
DDP = ["distributed.strategy=ddp", "distributed.nproc_per_node=2", "train.batch_size=1", "data.valid_samples=8"]


def command(entry: list[str], run_dir, overrides: list[str]) -> list[str]:
    """`wmtp train` or `python -m wmtp.train` of jobs/smoke.yaml's baseline stage alone (a copy whose
    `stages` is [baseline]; `--stage` is tested on its own in test_train_stages.py)."""
    spec = run_dir.parent / "smoke-baseline.yaml"
    if not spec.exists():
        doc = yaml.safe_load((asset_dir("jobs") / "smoke.yaml").read_text())
        doc.pop("per_stage")  # only the other stages have a block
        doc.pop("rho1")  # the rho1 stage's reference: a setting of an objective no stage runs is refused
        spec.write_text(yaml.safe_dump({**doc, "name": "smoke", "stages": ["baseline"]}))
    args = [sys.executable, *entry, str(spec), "--run-dir", str(run_dir)]
    for o in overrides:
        args += ["--set", o]
    return args


WMTP_TRAIN = ["-m", "wmtp_cli.main", "train"]
PYTHON_M = ["-m", "wmtp.train"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def logged_steps(stage_dir) -> list[int]:
    lines = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    return [m["step"] for m in lines if "loss/mtp" in m]


@pytest.mark.parametrize("launch", ["in-process", "torchrun"])
def test_second_writer_on_a_live_run_dir_is_refused_and_the_first_finishes(baseline_overrides, tmp_path, launch):
    """`torchrun`: `wmtp train` launching 2 DDP workers holds the lock; its own rank 0 must not refuse itself."""
    run_dir = tmp_path / "run"
    overrides = baseline_overrides + LONG + (DDP if launch == "torchrun" else [])
    log = (tmp_path / "first.log").open("w+")
    first = subprocess.Popen(
        command(WMTP_TRAIN, run_dir, overrides), stdout=log, stderr=subprocess.STDOUT, text=True, env=ENV
    )
    stage_dir = run_dir / "baseline"
    deadline = time.time() + 300
    # Started and checkpointed: without the lock, a second run would resume from this live checkpoint.
    while not any(stage_dir.glob(f"checkpoints/step_*/{TRAIN_STATE}")):
        assert first.poll() is None and time.time() < deadline, (tmp_path / "first.log").read_text()
        time.sleep(0.1)
    holder = json.loads((run_dir / ".wmtp.lock").read_text())
    assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()

    for entry in (WMTP_TRAIN, PYTHON_M):  # the launcher, and rank 0 of a run started by hand or by a container
        second = subprocess.run(
            command(entry, run_dir, overrides), capture_output=True, text=True, env=ENV, timeout=300
        )
        assert first.poll() is None, "the first run ended before the second one was checked: make LONG longer"
        assert second.returncode == 2, second.stdout + second.stderr
        assert second.stdout == ""
        assert second.stderr.strip().splitlines() == [
            f"error: run dir {run_dir} is in use by pid {first.pid} on host {socket.gethostname()} "
            f"(started {holder['started']}): one writer per run dir; wait for it to finish or pass another --run-dir"
        ]

    assert first.wait(timeout=600) == 0, (tmp_path / "first.log").read_text()
    output = (tmp_path / "first.log").read_text()
    assert "baseline: 150 steps" in output and "resumed" not in output
    steps = logged_steps(stage_dir)
    assert steps == list(range(1, 151))  # strictly increasing, each step once: no second writer interleaved
    assert not (run_dir / ".wmtp.lock").exists()  # released at the end

    # MLflow: one job with one stage run, one loss point per step (the refused writers opened no run,
    # logged nothing).
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    job, run = sorted(
        client.search_runs([client.get_experiment_by_name("weighted-mtp").experiment_id]),
        key=lambda r: "stage" in r.data.tags,
    )
    assert run.data.tags["mlflow.parentRunId"] == job.info.run_id
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss/mtp")] == steps


def test_a_stale_lock_is_taken_over_with_a_warning(baseline_overrides, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid names no process now (nothing else is likely to get it within seconds)
    (run_dir / ".wmtp.lock").write_text(
        json.dumps({"pid": gone.pid, "host": socket.gethostname(), "started": "2026-01-02T03:04:05+00:00"})
    )
    overrides = baseline_overrides + [
        "train.max_steps=2",
        "train.eval_interval=1000",
        "train.save_interval=1000",
        "data.sampling.n_samples=8",
    ]
    result = subprocess.run(
        command(WMTP_TRAIN, run_dir, overrides), capture_output=True, text=True, env=ENV, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        f"warning: run dir {run_dir}: taking over the stale lock of pid {gone.pid} on host "
        f"{socket.gethostname()} (started 2026-01-02T03:04:05+00:00), which no longer holds it"
    ) in result.stderr
    assert "baseline: 2 steps" in result.stdout
    assert (run_dir / "baseline" / "checkpoints" / "final" / TRAIN_STATE).is_file()
    assert not (run_dir / ".wmtp.lock").exists()
