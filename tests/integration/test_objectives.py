"""The registry of objectives (wmtp.train.objectives): every objective's `compute` logs exactly the metric
names it declares, and docs/adding-an-objective.md's walk-through adds a fifth one that trains."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml

from wmtp.distributed import DistContext
from wmtp.train import objectives as registry
from wmtp.train.config import SpecError, load_experiment
from wmtp.train.data_loading import move_batch
from wmtp.train.loop import Trainer, window_normalizers
from wmtp.train.objectives import pooled_metrics

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
WALK_THROUGH = REPO_ROOT / "docs" / "adding-an-objective.md"

# One process, the micro model, batches of 4 (over jobs/defaults.yaml: FSDP on 4 ranks).
ONE_PROCESS = [
    "distributed.strategy=none",
    "distributed.nproc_per_node=1",
    "model.dtype=float32",
    "train.batch_size=4",
    "train.grad_accum_steps=1",
    "train.warmup_steps=0",
]


def value_head_file(micro_models, tmp_path) -> str:
    """A critic's value_head.safetensors for the micro model (what the critic stage leaves in its checkpoint)."""
    from safetensors.torch import save_file

    from wmtp.model import ValueHead, load_model

    torch.manual_seed(0)
    path = tmp_path / "value_head.safetensors"
    save_file(ValueHead(load_model(micro_models["micro-mtp"]).args.dim).state_dict(), str(path))
    return str(path)


# Objectives that read a file (`input_paths`, `needs_stage`): the overrides that give it one. Any other
# registered objective is checked with the stage file alone.
INPUTS = {
    "verifiable": lambda models, tmp: [f"td.value_head={value_head_file(models, tmp)}"],
    "rho1": lambda models, tmp: [f"rho1.reference={models['micro-ref']}"],
}
CASES = [(name, []) for name in registry.objectives() if name != "rho1"]
CASES += [("rho1", ["rho1.mode=tokenskip"]), ("rho1", ["rho1.mode=weighted"])]


def one_stage(folder: Path, objective: str, overrides: list[str]):
    """The stage `objective` alone (its jobs/stages/<objective>.yaml from `folder` or the shipped jobs/)."""
    spec = folder / f"only-{objective}.yaml"
    spec.write_text(yaml.safe_dump({"stages": [objective]}))
    return load_experiment(str(spec), overrides + ONE_PROCESS).stages[0]


def check_declared_metrics(spec, stage_dir: Path) -> dict[str, list[str]]:
    """Run the objective's `compute` on the first batch in training and in validation mode, as the loop
    does, and compare the keys with its declared names; returns the keys seen."""
    trainer = Trainer(spec, stage_dir, DistContext(), {})
    objective, n_heads = trainer.objective, trainer.n_heads
    declared = type(objective).declared_metrics(spec, n_heads)
    assert declared.train == objective.metric_names(n_heads)
    batch = move_batch(next(iter(trainer.data.loader)), trainer.device)
    num_valid_H, num_response = window_normalizers([batch], trainer.ctx, trainer.device, objective)
    trainer.module.train()
    out = trainer.module(batch | {"num_valid_H": num_valid_H, "num_response": num_response}, objective)
    out.loss.backward()  # what the loop does with it: the loss is differentiable
    assert sorted(out.metrics) == sorted(declared.train), "training metrics"
    assert out.totals == {}
    trainer.module.eval()
    with torch.no_grad():
        val = trainer.module(batch, objective)
    assert sorted(val.metrics) == sorted(declared.train), "validation metrics"
    assert sorted(val.totals) == sorted(declared.totals), "validation totals"
    pooled = pooled_metrics(val.totals, spec.train.head_weights)
    assert sorted(pooled) == sorted(declared.pooled), "pooled validation metrics"
    assert set(trainer.validation_names()) == {"loss", *declared.train, *declared.pooled}
    return {"train": sorted(out.metrics), "totals": sorted(val.totals), "pooled": sorted(pooled)}


def test_the_registry_is_the_modules_of_the_package():
    assert list(registry.objectives()) == ["baseline", "critic", "rho1", "verifiable"]
    assert registry.section_owners() == {"critic": "critic", "rho1": "rho1", "td": "verifiable"}
    from wmtp.weighting import td

    assert registry.base.VALUE_TOTALS == list(td.EV_SUM_KEYS)  # spelled out in base.py (td imports torch)


@pytest.mark.parametrize("objective, extra", CASES, ids=[" ".join([n, *e]) for n, e in CASES])
def test_compute_logs_exactly_the_declared_metric_names(
    baseline_overrides, micro_models, tmp_path, one_torch_thread, objective, extra
):
    inputs = INPUTS.get(objective, lambda models, tmp: [])(micro_models, tmp_path)
    spec = one_stage(tmp_path, objective, baseline_overrides + inputs + extra)
    assert spec.objective == objective
    check_declared_metrics(spec, tmp_path / "stage")


def test_a_metric_the_objective_does_not_declare_fails_the_check(
    baseline_overrides, tmp_path, monkeypatch, one_torch_thread
):
    from wmtp.train.objectives.baseline import BaselineObjective

    original = BaselineObjective.compute

    def one_more(self, module, batch):
        out = original(self, module, batch)
        out.metrics["loss/extra"] = 0.0
        return out

    monkeypatch.setattr(BaselineObjective, "compute", one_more)
    with pytest.raises(AssertionError, match="training metrics"):
        check_declared_metrics(one_stage(tmp_path, "baseline", baseline_overrides), tmp_path / "stage")


def walk_through_files() -> dict[str, str]:
    """The files docs/adding-an-objective.md writes: its code blocks with a `title="PATH"`."""
    blocks = re.findall(r'```\w+ title="([^"]+)"\n(.*?)```', WALK_THROUGH.read_text(), re.DOTALL)
    return dict(blocks)


@pytest.fixture
def focal(tmp_path, monkeypatch):
    """The walk-through's files: the module registered as the package's (an extra folder on its path, as if
    written into wmtp/train/objectives/), the YAML files in a jobs/ folder of their own."""
    files = walk_through_files()
    assert sorted(files) == ["jobs/focal.yaml", "jobs/stages/focal.yaml", "wmtp/train/objectives/focal.py"]
    package = tmp_path / "objectives"
    package.mkdir()
    (package / "focal.py").write_text(files["wmtp/train/objectives/focal.py"])
    monkeypatch.setattr(registry, "__path__", [*registry.__path__, str(package)])
    for name in ("jobs/focal.yaml", "jobs/stages/focal.yaml"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(files[name])
    yield tmp_path / "jobs"
    sys.modules.pop("wmtp.train.objectives.focal", None)
    monkeypatch.undo()
    assert "focal" not in registry.objectives()


def test_the_walk_through_adds_an_objective_that_trains(focal, baseline_overrides, tmp_path, one_torch_thread):
    from wmtp.train.runner import run_experiment

    assert list(registry.objectives()) == ["baseline", "critic", "focal", "rho1", "verifiable"]
    overrides = baseline_overrides + [
        "train.max_steps=2",
        "train.log_interval=1",
        "train.eval_interval=2",
        "train.save_interval=2",
        "eval=null",
        "focal.gamma=1.5",
    ]
    [spec] = load_experiment(str(focal / "focal.yaml"), overrides + ONE_PROCESS).stages
    assert spec.focal.gamma == 1.5 and spec.data.sampling.strategy == "correct_only"
    assert {"td", "critic", "rho1"}.isdisjoint(spec.to_dict())
    assert list(spec.to_dict())[:7] == ["experiment", "stage", "objective", "model", "data", "train", "focal"]
    check_declared_metrics(spec, tmp_path / "probe")

    [result] = run_experiment(
        load_experiment(str(focal / "focal.yaml"), overrides + ONE_PROCESS), tmp_path / "run", DistContext()
    )
    assert result.steps == 2
    lines = [json.loads(line) for line in (result.stage_dir / "metrics.jsonl").read_text().splitlines()]
    assert all("focal_weight/mean" in m for m in lines if "loss/total" in m) and len(lines) >= 2
    assert any("val/focal_weight/mean" in m and "val/ce" in m for m in lines)
    assert yaml.safe_load((result.stage_dir / "spec.yaml").read_text())["focal"] == {"gamma": 1.5}

    # The checks every objective gets: a typo in its section, and its section on an experiment without it.
    with pytest.raises(SpecError, match=r"from --set focal\.gama=1: focal\.gama: unknown key"):
        load_experiment(str(focal / "focal.yaml"), ["focal.gama=1"])
    with pytest.raises(
        SpecError,
        match=r"focal\.gamma: a setting of the focal objective, which no stage of "
        r"experiment baseline runs \(its objectives: baseline\)",
    ):
        load_experiment("baseline", ["focal.gamma=1"])
    assert "focal" not in load_experiment("baseline").stages[0].to_dict()
