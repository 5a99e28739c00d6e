"""Resume means the same run: which spec changes a run dir refuses, and metrics.jsonl cut back to the
checkpoint (wmtp.train.resume; no torch)."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from wmtp.train.config import SpecError, dump_spec, load_experiment
from wmtp.train.resume import RANKS, check_run_dir, drop_metrics_after, spec_differences


def baseline(*overrides: str):
    """The shipped baseline experiment (FSDP on 4 ranks), with --set overrides."""
    return load_experiment("baseline", list(overrides))


def changed(spec: dict, **changes) -> dict:
    """A copy of `spec` with `a__b=value` set at a.b (sections created as needed)."""
    spec = copy.deepcopy(spec)
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = spec
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return spec


SAVED = baseline().stages[0].to_dict()

# (what the resume asks for differently, the keys refused: [] = may change)
CASES = [
    # what is trained, and on what: must be as the stage was started
    ({"train__lr": 3e-5}, [("train.lr", 1e-5, 3e-5)]),
    ({"data__max_length": 1024}, [("data.max_length", 2048, 1024)]),
    (
        {"model__path": "/elsewhere/meta-7b-mtp"},
        [("model.path", "storage/models_v2/meta-7b-mtp", "/elsewhere/meta-7b-mtp")],
    ),  # paths compare as written
    ({"data__sampling__strategy": "balanced"}, [("data.sampling.strategy", "correct_only", "balanced")]),
    ({"train__max_steps": 100}, [("train.max_steps", None, 100)]),  # more steps: another LR schedule
    ({"train__betas": [0.9, 0.99]}, [("train.betas", [0.9, 0.95], [0.9, 0.99])]),
    ({"td__beta": 0.5}, []),  # not baseline's: a section of another objective takes no part (see below)
    ({"early_stopping__patience": 9}, [("early_stopping.patience", 3, 9)]),
    ({"objective": "rho1"}, [("objective", "baseline", "rho1")]),
    ({"tracking__experiment": "other"}, [("tracking.experiment", "weighted-mtp", "other")]),  # would split the run
    ({"tracking__run_name": "renamed"}, [("tracking.run_name", None, "renamed")]),
    # the number of ranks: the global batch, and one RNG state per rank in every checkpoint
    ({"distributed__nproc_per_node": 2}, [(RANKS, 4, 2)]),
    ({"distributed__strategy": "none"}, [(RANKS, 4, 1)]),
    (
        {"train__lr": 3e-5, "data__max_length": 1024},
        [("data.max_length", 2048, 1024), ("train.lr", 1e-5, 3e-5)],
    ),  # in the spec's order
    # where and how the job runs: may change
    ({"distributed__strategy": "ddp"}, []),
    (
        {
            "distributed__activation_checkpointing": False,
            "distributed__backend": "gloo",
            "distributed__preemption_grace_s": 30,
        },
        [],
    ),
    ({"tracking__uri": "https://mlflow.elsewhere.example"}, []),
    ({"tracking__buffer_size": 5}, []),
    ({"targets__k8s__namespace": "elsewhere", "targets__vessl__code_ref": "abc123"}, []),
    ({"env__secrets": []}, []),
    ({"output__root": "/mnt/other"}, []),
    ({"eval": {"benchmark": "humaneval", "n": 1}}, []),
    ({"data__num_workers": 4}, []),
]


@pytest.mark.parametrize("changes, expected", CASES)
def test_spec_differences(changes, expected):
    assert spec_differences(SAVED, changed(SAVED, **changes)) == expected


def test_one_rank_is_one_rank_whatever_nproc_per_node_says():
    single = changed(SAVED, distributed__strategy="none", distributed__nproc_per_node=1)
    assert spec_differences(single, changed(single, distributed__nproc_per_node=8)) == []
    assert spec_differences(single, changed(single, distributed__strategy="ddp")) == []  # ddp on 1 rank


def run_dir_with(tmp_path, *overrides: str):
    """A run dir whose baseline stage was started with these overrides (its spec.yaml, as the loop writes it)."""
    stage = baseline(*overrides).stages[0]
    (tmp_path / "baseline").mkdir(parents=True)
    (tmp_path / "baseline" / "spec.yaml").write_text(dump_spec(stage))
    return tmp_path


def test_a_run_dir_started_with_another_spec_is_refused_in_one_line(tmp_path):
    run_dir = run_dir_with(tmp_path)
    with pytest.raises(SpecError) as refused:
        check_run_dir(baseline("train.lr=3e-5", "data.max_length=1024"), run_dir)
    assert str(refused.value) == (
        f"stage baseline: run dir {run_dir} was started with another spec: data.max_length 2048 → 1024, "
        "train.lr 1e-05 → 3e-05; resume with the same spec, or start a new run dir "
        "(--run-dir NEW or leave --run-dir out)"
    )


def test_the_same_spec_or_platform_changes_resume(tmp_path):
    run_dir = run_dir_with(tmp_path, "train.lr=3e-5")
    check_run_dir(baseline("train.lr=3e-5"), run_dir)
    check_run_dir(
        baseline(
            "train.lr=3e-5",
            "tracking.uri=http://other:5000",
            "targets.k8s.namespace=x",
            "data.num_workers=8",
            "distributed.strategy=ddp",
        ),
        run_dir,
    )
    check_run_dir(baseline("train.lr=1e-4"), tmp_path / "new")  # nothing started there
    check_run_dir(baseline("train.lr=1e-4"), None)


def test_a_spec_yaml_from_before_a_key_existed_resumes_with_its_default(tmp_path):
    run_dir = run_dir_with(tmp_path)
    saved = run_dir / "baseline" / "spec.yaml"
    text = saved.read_text()
    assert "  keep_last: 2\n" in text
    saved.write_text(text.replace("  keep_last: 2\n", ""))
    check_run_dir(baseline(), run_dir)


@pytest.mark.parametrize(
    "content, message",
    [
        ("train: [unclosed\n", "spec.yaml:2: invalid YAML"),
        ("- a list\n", "spec.yaml: expected a mapping at the top level"),
        (
            "experiment: baseline\nstage: baseline\nobjective: baseline\nmodel: {path: m}\ndata: {train: t}\n"
            "train: {lrr: 1}\n",
            "spec.yaml: train.lrr: unknown key",
        ),
    ],
)
def test_an_unreadable_spec_yaml_is_named(tmp_path, content, message):
    (tmp_path / "baseline").mkdir()
    (tmp_path / "baseline" / "spec.yaml").write_text(content)
    with pytest.raises(SpecError) as refused:
        check_run_dir(baseline(), tmp_path)
    line = str(refused.value)
    assert (
        line.startswith(
            f"stage baseline: the spec this run dir was started with cannot be read: {tmp_path / 'baseline'}/"
        )
        and message in line
        and "\n" not in line
    )


def test_metrics_after_the_checkpoint_are_dropped_atomically(tmp_path):
    path = tmp_path / "metrics.jsonl"
    entries = [{"step": s, "loss/total": 1.0 / s} for s in range(1, 6)] + [{"step": 4, "val/ce": 2.0}]
    path.write_text("".join(json.dumps(e) + "\n" for e in entries) + '{"step": 6, "loss/to')  # torn by a kill
    assert drop_metrics_after(path, 3) == 4
    assert [json.loads(line) for line in path.read_text().splitlines()] == entries[:3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no temp file left
    assert drop_metrics_after(path, 3) == 0 and drop_metrics_after(tmp_path / "absent.jsonl", 3) == 0


def test_a_section_of_the_stages_objective_must_be_as_started(tmp_path):
    verifiable = load_experiment("verifiable").stages[1]
    (tmp_path / "verifiable").mkdir()
    (tmp_path / "verifiable" / "spec.yaml").write_text(dump_spec(verifiable))
    with pytest.raises(SpecError, match=r"started with another spec: td\.beta 0\.9 → 0\.5;"):
        check_run_dir(load_experiment("verifiable", ["td.beta=0.5"]), tmp_path)


@pytest.mark.parametrize("experiment", ["baseline", "verifiable", "rho1"])
def test_a_spec_yaml_with_every_objectives_section_resumes(tmp_path, experiment):
    """Run dirs written before stage specs carried only their objective's section hold all of them (with their
    defaults): the others are dropped from the comparison, the stage's own still compared."""
    legacy = {
        "td": {
            "gamma": 1.0,
            "beta": 0.9,
            "w_min": 0.1,
            "w_max": 5.0,
            "value_coef": 0.5,
            "value_loss": "mse",
            "huber_delta": 1.0,
            "value_clip": 0.2,
            "value_head": None,
        },
        "critic": {"value_loss": "mse", "huber_delta": 1.0, "gamma": 1.0},
        "rho1": {
            "reference": None,
            "mode": "weighted",
            "keep_ratio": 0.6,
            "temperature": 1.0,
            "w_min": 0.0,
            "w_max": 3.0,
        },
    }
    stage = load_experiment(experiment).stages[-1]
    saved = stage.to_dict()
    for section, values in legacy.items():
        saved.setdefault(section, values)  # the stage's own as it was run, the others at their defaults
    (tmp_path / stage.stage).mkdir()
    (tmp_path / stage.stage / "spec.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    check_run_dir(load_experiment(experiment), tmp_path)
    if experiment == "verifiable":
        with pytest.raises(SpecError, match=r"td\.w_max 5\.0 → 4\.0"):
            check_run_dir(load_experiment(experiment, ["td.w_max=4.0"]), tmp_path)
