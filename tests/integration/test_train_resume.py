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


def trainer_process(spec, overrides, run_dir, driver: str, variable: str, at=None) -> subprocess.Popen:
    """`python -m wmtp.train SPEC`, or with `at` the `driver` script that signals itself at that step."""
    entry = ["-c", driver] if at else ["-m", "wmtp.train"]
    command = [sys.executable, *entry, spec, "--run-dir", str(run_dir)]
    for o in overrides:
        command += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1", variable: str(at or "")}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def train_process(overrides, run_dir, sigterm_at=None) -> subprocess.Popen:
    return trainer_process("smoke", overrides, run_dir, SIGTERM_DRIVER, "SIGTERM_AT", sigterm_at)


def validations(stage_dir):
    """The validation entries of metrics.jsonl, in order."""
    lines = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    return [m for m in lines if any(k.startswith("val/") for k in m)]


def token_counts(stage_dir):
    """(step, tokens) of every training log entry of metrics.jsonl."""
    lines = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    return [(m["step"], m["tokens"]) for m in lines if "tokens" in m]


def test_sigterm_on_an_eval_step_then_resume_equals_an_uninterrupted_run(smoke_overrides, tmp_path):
    overrides = smoke_overrides + [
        "train.max_steps=12",
        "train.save_interval=3",
        "train.eval_interval=4",
        "train.log_interval=1",
        "train.grad_accum_steps=2",
        "train.batch_size=2",
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
    # The running token count (`tokens`, what `wmtp compare` reports as tokens seen) goes on from the checkpoint.
    assert token_counts(interrupted_dir / "verifiable") == token_counts(tmp_path / "straight" / "verifiable")
    for stage in ("critic", "verifiable", "baseline", "rho1"):
        for checkpoint in ("final", "best"):
            a = load_model(tmp_path / "straight" / stage / "checkpoints" / checkpoint).state_dict()
            b = load_model(interrupted_dir / stage / "checkpoints" / checkpoint).state_dict()
            for name in a:
                assert torch.equal(a[name], b[name]), f"{stage}/{checkpoint}: {name} differs after resume"


@pytest.mark.slow
@pytest.mark.parametrize("how, num_workers", [("SIGTERM", 0), ("SIGINT", 2), ("SIGKILL", 0)])
def test_signal_to_wmtp_train_reaches_torchrun_workers_which_save(baseline_overrides, tmp_path, how, num_workers):
    """`wmtp train` with 2 DDP processes: SIGTERM or Ctrl-C (SIGINT) to it, with DataLoader worker
    processes or without, or even SIGKILL of `wmtp train` itself → the workers save a step checkpoint."""
    run_dir = tmp_path / "run"
    overrides = baseline_overrides + [
        "distributed.strategy=ddp",
        "distributed.nproc_per_node=2",
        "distributed.preemption_grace_s=120",
        "train.batch_size=1",
        "train.grad_accum_steps=1",
        "train.num_epochs=100",
        "train.max_steps=1000",
        "train.log_interval=1",
        "train.eval_interval=1000",
        "train.save_interval=1000",
        f"data.num_workers={num_workers}",
    ]
    command = [sys.executable, "-m", "wmtp_cli.main", "train", "baseline", "--run-dir", str(run_dir)]
    for o in overrides:
        command += ["--set", o]
    log = (tmp_path / "out.log").open("w+")
    proc = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    metrics = run_dir / "baseline" / "metrics.jsonl"
    deadline = time.time() + 240
    while not metrics.exists():  # training has started: both workers are inside the loop
        assert proc.poll() is None and time.time() < deadline, (tmp_path / "out.log").read_text()
        time.sleep(0.1)
    proc.send_signal(getattr(signal, how))
    proc.wait(timeout=240)
    checkpoints = run_dir / "baseline" / "checkpoints"
    while not any(checkpoints.glob("step_*/train_state.json")):  # after SIGKILL, torchrun saves on its own
        assert time.time() < deadline + 60, (tmp_path / "out.log").read_text()
        time.sleep(0.2)
    if how == "SIGKILL":
        # torchrun got SIGTERM when its parent died; wait until it and its workers are gone.
        while any(str(run_dir) in _cmdline(pid) for pid in _pids()):
            assert time.time() < deadline + 120, "torchrun or a worker still running"
            time.sleep(0.2)
    output = (tmp_path / "out.log").read_text()
    assert "preempted: saved step" in output, output
    if how != "SIGKILL":
        assert proc.returncode == 0, output
    latest = sorted(checkpoints.glob("step_*"))[-1]
    assert (latest / "train_state.json").is_file() and not (checkpoints / "final").exists()


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


# `python -m wmtp.train` that SIGKILLs itself right after step SIGKILL_AT (logged, maybe validated,
# not checkpointed unless a save was due): what a node failure or the OOM killer does to a run.
SIGKILL_DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    from wmtp.train import __main__ as entry, loop

    at = int(os.environ["SIGKILL_AT"])
    after_step = loop.Trainer.after_step

    def killed_after_step(self, step, tracker):
        stop = after_step(self, step, tracker)
        if step == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return stop

    loop.Trainer.after_step = killed_after_step
    sys.exit(entry.main())
    """
)


def baseline_process(overrides, run_dir, sigkill_at=None) -> subprocess.Popen:
    return trainer_process("baseline", overrides, run_dir, SIGKILL_DRIVER, "SIGKILL_AT", sigkill_at)


def one_stage_overrides(smoke_overrides) -> list[str]:
    """The baseline experiment alone, one process, 8 steps: a log every step, validations every 2, saves every 3."""
    return smoke_overrides + [
        "distributed.strategy=none",
        "distributed.nproc_per_node=1",
        "train.max_steps=8",
        "train.batch_size=2",
        "train.grad_accum_steps=1",
        "train.warmup_steps=0",
        "train.log_interval=1",
        "train.eval_interval=2",
        "train.save_interval=3",
        "tracking.experiment=wmtp-resume",
    ]


def test_after_sigkill_and_resume_each_step_is_logged_once_and_the_spec_is_kept(baseline_overrides, tmp_path):
    from mlflow.tracking import MlflowClient

    overrides = one_stage_overrides(baseline_overrides)
    run_dir, stage_dir = tmp_path / "run", tmp_path / "run" / "baseline"
    killed = baseline_process(overrides, run_dir, sigkill_at=5)
    output = killed.communicate(timeout=600)[0]
    assert killed.returncode == -signal.SIGKILL, output
    logged = [json.loads(line)["step"] for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(logged) == 5  # steps after the last checkpoint were logged before the kill

    resumed_at_ms = time.time() * 1000
    # Platform-only settings may change on resume (another namespace, a bigger buffer): same run.
    resumed = baseline_process(overrides + ["targets.k8s.namespace=elsewhere", "tracking.buffer_size=500"], run_dir)
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output
    checkpoint_step = int(output.split("resumed baseline from ")[1].split(" at step ")[1].split()[0])
    assert checkpoint_step < 5, output
    assert f"metric point(s) after step {checkpoint_step}, from the interrupted run" in output

    entries = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    train_steps = [e["step"] for e in entries if "loss/total" in e]
    val_steps = [e["step"] for e in entries if "val/ce" in e]
    assert train_steps == list(range(1, 9)) and val_steps == [2, 4, 6, 8]
    assert [e["step"] for e in entries] == sorted(e["step"] for e in entries)

    client = MlflowClient(next(o for o in baseline_overrides if o.startswith("tracking.uri=")).split("=", 1)[1])
    [run] = client.search_runs(
        [client.get_experiment_by_name("wmtp-resume").experiment_id], "tags.stage = 'baseline'"
    )  # the stage's run (the job's run holds it)
    assert run.info.run_id == (stage_dir / "mlflow_run_id").read_text().strip()
    assert run.info.status == "FINISHED" and run.data.params["train.max_steps"] == "8"
    # The killed job's own run is reopened, not doubled: the resumed stage's run (the copy) nests under it.
    job = client.get_run((run_dir / "mlflow_job_run_id").read_text().strip())
    assert job.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == job.info.run_id
    assert len(client.search_runs([run.info.experiment_id])) == 2
    for key, steps in (("loss/total", list(range(1, 9))), ("val/ce", [2, 4, 6, 8])):
        history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: (m.step, m.timestamp))
        assert [m.step for m in history] == steps, key
        # The points after the checkpoint are the resumed run's, not the killed one's.
        assert all((m.timestamp >= resumed_at_ms) == (m.step > checkpoint_step) for m in history), key

    # The finished stage is not run again with another spec either: refused, spec.yaml as it was.
    spec_yaml = (stage_dir / "spec.yaml").read_text()
    refused = baseline_process(overrides + ["train.lr=3e-5", "data.max_length=128"], run_dir)
    output = refused.communicate(timeout=600)[0]
    assert refused.returncode == 2 and output.strip() == (
        f"error: stage baseline: run dir {run_dir} was started with another spec: data.max_length 256 → 128, "
        "train.lr 1e-05 → 3e-05; resume with the same spec, or start a new run dir (--run-dir NEW or leave "
        "--run-dir out)"
    ), output
    assert (stage_dir / "spec.yaml").read_text() == spec_yaml
