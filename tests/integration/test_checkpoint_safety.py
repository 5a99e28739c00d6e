"""Run dirs one can hand to a colleague: checkpoints hold data, never code; a checkpoint of another model,
a garbage file, a half-written checkpoint or a full disk is one line (or cleaned up), never a traceback."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors import SafetensorError

from wmtp.distributed import DistContext
from wmtp.errors import CheckpointError
from wmtp.model import load_model
from wmtp.tracking import NullTracker
from wmtp.train import checkpointing as ckpt
from wmtp.train.config import dump_spec, load_experiment
from wmtp.train.loop import Trainer, train_stage

pytestmark = pytest.mark.slow

# Two steps, a checkpoint after the first: removing `final` leaves a stage interrupted after step 1.
OVERRIDES = [
    "train.max_steps=2",
    "train.save_interval=1",
    "train.eval_interval=1000",
    "train.log_interval=1",
    "train.batch_size=2",
    "train.grad_accum_steps=1",
    "distributed.strategy=none",
    "distributed.nproc_per_node=1",
]
CHECKPOINT_FILES = {
    "configs/params.json",
    "safetensors/model.safetensors",
    "tokenizer/tokenizer.model",
    "metadata.json",
    "optimizer.safetensors",
    "rng.safetensors",
    "train_state.json",
}


def baseline_spec(baseline_overrides, extra=()):
    return load_experiment("baseline", baseline_overrides + OVERRIDES + list(extra)).stages[0]


def interrupted_run(baseline_overrides, run_dir, extra=()):
    """`run_dir/baseline` as a run killed after its step-1 checkpoint leaves it (spec.yaml included)."""
    stage_dir = run_dir / "baseline"
    stage_dir.mkdir(parents=True)
    spec = baseline_spec(baseline_overrides, extra)
    (stage_dir / "spec.yaml").write_text(dump_spec(spec))
    Trainer(spec, stage_dir, DistContext(), {}).run(NullTracker())
    for later in ("final", "best"):  # both written at step 2 (its final validation is the first one)
        shutil.rmtree(stage_dir / "checkpoints" / later)
    return stage_dir / "checkpoints" / "step_000001"


@pytest.fixture
def step_1(baseline_overrides, tmp_path, one_torch_thread):
    """The step-1 checkpoint of an interrupted baseline stage in tmp_path/run (AdamW: optimizer state)."""
    return interrupted_run(baseline_overrides, tmp_path / "run")


def wmtp_train(baseline_overrides, run_dir, extra=()) -> subprocess.CompletedProcess:
    """A real `wmtp train baseline` resuming `run_dir` with the overrides the run was started with."""
    command = [sys.executable, "-m", "wmtp_cli.main", "train", "baseline", "--run-dir", str(run_dir)]
    for o in baseline_overrides + OVERRIDES + list(extra):
        command += ["--set", o]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The run's error, asserting it exited 2 with exactly one line on stderr and no traceback."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0].removeprefix("error: ")


class OpenForWriting:
    """Unpickling this calls open(path, "w"): code run by `torch.load(weights_only=False)` / `pickle.load`."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_checkpoints_hold_only_safetensors_and_json(step_1):
    assert {str(p.relative_to(step_1)) for p in step_1.rglob("*") if p.is_file()} == CHECKPOINT_FILES
    state = ckpt.read_train_state(step_1)
    assert state["step"] == 1 and len(state["rng"]) == 1
    tensors = ckpt.read_tensors(step_1 / ckpt.OPTIMIZER_FILE)
    assert "state.model.output.weight.exp_avg_sq" in tensors  # AdamW's state, keyed by parameter FQN
    assert state["optimizer"]["param_groups"][0]["betas"] == [0.9, 0.95]


def test_a_pickle_payload_in_a_checkpoint_is_refused_and_never_runs(baseline_overrides, step_1, tmp_path):
    marker = tmp_path / "payload-ran"
    planted = step_1 / ckpt.LEGACY_TRAIN_STATE
    torch.save({"step": 1, "optimizer": OpenForWriting(marker)}, planted)
    # The payload is live: what the older reader did with this file runs it.
    decoy = tmp_path / "decoy.pt"
    torch.save({"step": 1, "optimizer": OpenForWriting(tmp_path / "decoy-ran")}, decoy)
    torch.load(decoy, weights_only=False)
    assert (tmp_path / "decoy-ran").exists()

    error = one_error_line(wmtp_train(baseline_overrides, tmp_path / "run"))
    assert error.startswith(f"{planted}: written by an older wmtp that stored the train state as a pickle")
    assert "start a fresh run dir" in error
    assert not marker.exists()
    assert not (step_1.parent / "final").exists()  # nothing trained either


def set_step(text: str) -> str:
    return json.dumps({**json.loads(text), "step": "four"})


@pytest.mark.parametrize(
    "name, corrupt, expected",
    [
        ("train_state.json", lambda text: "{not json", "cannot be read as JSON"),
        ("train_state.json", set_step, "'step' is \"four\"; expected an integer ≥ 0"),
        ("optimizer.safetensors", None, "cannot be read as safetensors"),
    ],
)
def test_a_garbage_checkpoint_file_is_named_in_one_line(baseline_overrides, step_1, tmp_path, name, corrupt, expected):
    path = step_1 / name
    if corrupt is None:
        path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage" + os.urandom(64))
    else:
        path.write_text(corrupt(path.read_text()))
    error = one_error_line(wmtp_train(baseline_overrides, tmp_path / "run"))
    assert error.startswith(f"{path}: ") and expected in error


def test_resuming_with_a_checkpoint_of_another_model_names_the_keys(
    baseline_overrides, micro_models, tmp_path, one_torch_thread
):
    # The stage ran on the 3-block next-token model at `model`; then `model` became the 4-head MTP model
    # (same path, so the spec the run dir was started with still matches).
    model = tmp_path / "model"
    shutil.copytree(micro_models["micro-ref"], model)
    interrupted_run(baseline_overrides, tmp_path / "run", [f"model.path={model}"])
    shutil.rmtree(model)
    shutil.copytree(micro_models["micro-mtp"], model)
    error = one_error_line(wmtp_train(baseline_overrides, tmp_path / "run", [f"model.path={model}"]))
    step_1 = tmp_path / "run" / "baseline" / "checkpoints" / "step_000001"
    assert error.startswith(
        f"{step_1}: saved from another model than this run's (model.path?): missing from the checkpoint: "
    )
    assert "model.extra_heads.0.attention.wq.weight" in error  # a head the checkpoint lacks, named
    assert "RuntimeError" not in error and len(error) < 600


def test_half_written_checkpoints_are_cleared_before_resuming(baseline_overrides, step_1, capsys):
    root = step_1.parent
    temp = root / ".step_000002.k3j_x9q"  # a save killed while writing its temp dir
    (temp / "safetensors").mkdir(parents=True)
    (temp / "safetensors" / "model.safetensors").write_bytes(b"\0" * 100)
    shutil.copytree(step_1, root / ".step_000001.old")  # killed after the swap: the copy is stale
    shutil.copytree(step_1, root / ".best.old")  # killed between the two renames: the only `best`
    (root / ".keep").write_text("not ours")
    trainer = Trainer(baseline_spec(baseline_overrides), root.parent, DistContext(), {})
    assert trainer.resume_if_possible() and trainer.state["step"] == 1
    assert sorted(p.name for p in root.iterdir()) == [".keep", "best", "step_000001"]
    assert ckpt.read_train_state(root / "best")["step"] == 1
    out = capsys.readouterr().out
    assert f"removed {temp} (half-written by an interrupted save)" in out
    assert f"restored {root / 'best'} from .best.old" in out


def fail_second_save(monkeypatch, how):
    """Make the save of step 2 hit a full disk, the way each writer reports it, after files were written."""

    def second(path) -> bool:
        return any(part.startswith(".step_000002.") for part in path.parts)

    if how == "safetensors":
        real = ckpt.save_file

        def save_file(tensors, path, metadata=None):
            if second(path):
                raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
            return real(tensors, path, metadata=metadata)

        monkeypatch.setattr(ckpt, "save_file", save_file)
    else:
        real = ckpt.populate_model_dir

        def populate_model_dir(target, *args, **kwargs):
            real(target, *args, **kwargs)
            if second(target):
                raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(ckpt, "populate_model_dir", populate_model_dir)


@pytest.mark.parametrize("how", ["safetensors", "oserror"])
def test_a_full_disk_is_one_line_keeps_earlier_checkpoints_and_fails_the_mlflow_run(
    baseline_overrides, tmp_path, monkeypatch, one_torch_thread, no_tracking_env, how
):
    spec = baseline_spec(baseline_overrides, ["train.max_steps=3"])
    stage_dir = tmp_path / "run" / "baseline"
    fail_second_save(monkeypatch, how)
    with pytest.raises(CheckpointError) as caught:
        train_stage(spec, stage_dir, DistContext(), {})
    message = str(caught.value)
    assert message.startswith(f"{stage_dir}: no space left on the device for checkpoint step_000002 (needs about ")
    assert " free); the previous checkpoints are intact" in message and "\n" not in message
    root = stage_dir / "checkpoints"
    assert [p.name for p in root.iterdir()] == ["step_000001"]  # the temp dir is gone
    load_model(root / "step_000001", verify=True)
    assert ckpt.latest_checkpoint(stage_dir) == root / "step_000001"
    client = MlflowClient(tracking_uri=spec.tracking.uri)
    [run] = client.search_runs([client.get_experiment_by_name(spec.tracking.experiment).experiment_id])
    assert run.info.status == "FAILED"
