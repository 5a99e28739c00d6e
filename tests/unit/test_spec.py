"""Experiment specs: every file in jobs/ loads; merging order; unknown keys and bad values are named."""

import pytest

from wmtp.assets import asset_dir
from wmtp.train.config import SpecError, deep_merge, load_experiment, parse_override

EXPERIMENTS = sorted(p.stem for p in asset_dir("jobs").glob("*.yaml") if p.stem != "defaults")


def test_the_shipped_experiments_are_the_documented_ones():
    assert EXPERIMENTS == ["baseline", "critic", "pycode", "rho1", "smoke", "verifiable"]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_spec_in_jobs_loads(name):
    experiment = load_experiment(name)
    assert experiment.name == name and experiment.stages
    for stage in experiment.stages:
        assert stage.objective == stage.stage


@pytest.mark.parametrize("preset", [p.stem for p in (asset_dir("jobs") / "presets").glob("*.yaml")])
def test_every_preset_loads(preset):
    assert load_experiment("baseline", preset=preset).stages[0].distributed.nproc_per_node == 1


def test_verifiable_chains_critic_then_verifiable_with_stage_defaults():
    critic, verifiable = load_experiment("verifiable").stages
    assert (critic.objective, verifiable.objective) == ("critic", "verifiable")
    assert critic.data.sampling.strategy == "balanced"
    assert verifiable.data.sampling.strategy == "curriculum"
    assert verifiable.td.beta == 0.9 and verifiable.td.w_max == 5.0


def test_layers_merge_in_order_defaults_stage_experiment_per_stage_preset_overrides():
    stages = load_experiment("smoke", ["train.lr=0.5"], preset="local-light").stages
    critic = next(s for s in stages if s.stage == "critic")
    baseline = next(s for s in stages if s.stage == "baseline")
    assert critic.model.path.endswith("micro-mtp")  # experiment over defaults
    assert critic.train.lr == 0.5 and baseline.train.lr == 0.5  # --set over per_stage and experiment
    assert baseline.train.max_steps == 20  # preset over experiment
    rho1 = next(s for s in stages if s.stage == "rho1")
    assert rho1.rho1.mode == "tokenskip"  # per_stage


def test_overrides_parse_as_yaml_values():
    assert parse_override("train.max_steps=7") == (["train", "max_steps"], 7)
    assert parse_override("train.head_weights=[0.5, 0.5]") == (["train", "head_weights"], [0.5, 0.5])
    assert parse_override("td.value_head=null") == (["td", "value_head"], None)
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}}) == {"a": {"b": 3, "c": 2}}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.lrr=1"], r"from --set train\.lrr=1: train\.lrr: unknown key"),
        (["train.lr=fast"], r"from --set train\.lr=fast: train\.lr: Input should be a valid number.*'fast'"),
        (["distributed.strategy=horovod"], r"distributed\.strategy: Input should be 'none', 'ddp' or 'fsdp'"),
        (["train"], r"override 'train': expected KEY\.PATH=VALUE"),
        (["data.sampling.correct_ratio=x"], r"data\.sampling\.correct_ratio"),
    ],
)
def test_bad_overrides_name_the_key_and_what_was_expected(overrides, message):
    with pytest.raises(SpecError, match=message):
        load_experiment("baseline", overrides)


def test_a_bad_value_from_a_file_names_the_file_not_an_override(tmp_path):
    spec = tmp_path / "mine.yaml"
    spec.write_text("stages: [baseline]\ntrain: {lr: fast}\n")
    with pytest.raises(SpecError) as caught:
        load_experiment(str(spec), ["train.batch_size=2"])
    assert "mine.yaml (stage baseline): train.lr:" in str(caught.value)
    assert "--set" not in str(caught.value)


def test_unknown_experiment_and_preset_list_the_choices():
    with pytest.raises(SpecError, match=r"no jobs/nope\.yaml; available: \['baseline'"):
        load_experiment("nope")
    with pytest.raises(SpecError, match=r"preset 'heavy'.*available: \['local-light', 'micro'\]"):
        load_experiment("baseline", preset="heavy")


def test_broken_yaml_names_file_and_line(tmp_path):
    jobs = tmp_path / "jobs"
    (jobs / "stages").mkdir(parents=True)
    for name in ("defaults.yaml", "stages/baseline.yaml"):
        (jobs / name).write_text((asset_dir("jobs") / name).read_text())
    (jobs / "mine.yaml").write_text("stages: [baseline]\ntrain:\n  lr: [1,\n")
    with pytest.raises(SpecError, match=r"mine\.yaml:\d+: invalid YAML"):
        load_experiment(str(jobs / "mine.yaml"))
    (jobs / "mine.yaml").write_text("stages: baseline\n")
    with pytest.raises(SpecError, match="stages: expected a non-empty list"):
        load_experiment(str(jobs / "mine.yaml"))


def test_rho1_without_reference_is_refused():
    with pytest.raises(SpecError, match="rho1.reference: required"):
        load_experiment("rho1", ["rho1.reference=null"])


def test_spec_hash_changes_with_the_spec():
    a = load_experiment("baseline").stages[0]
    b = load_experiment("baseline", ["train.lr=2e-5"]).stages[0]
    assert a.spec_hash() != b.spec_hash() and len(a.spec_hash()) == 12


def test_a_missing_eval_file_is_refused_before_training(tmp_path):
    from wmtp.distributed import DistContext
    from wmtp.train.runner import run_experiment

    present = tmp_path / "present"
    present.mkdir()
    inputs = [f"model.path={present}", f"data.train={present}", f"data.valid={present}", f"rho1.reference={present}"]
    experiment = load_experiment("smoke", inputs + ["eval.benchmark=mbpp", f"eval.data={tmp_path / 'mbpp.jsonl'}"])
    # The critic is never evaluated (its policy is frozen): the first stage that reads the file is named.
    with pytest.raises(SpecError, match=r"stage verifiable: eval\.data: .*mbpp\.jsonl does not exist"):
        run_experiment(experiment, tmp_path / "run", DistContext())
    experiment = load_experiment("smoke", inputs + [f"eval.mbpp_data={tmp_path / 'mbpp.jsonl'}"])
    with pytest.raises(SpecError, match=r"stage verifiable: eval\.mbpp_data: .*mbpp\.jsonl does not exist"):
        run_experiment(experiment, tmp_path / "run", DistContext())
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_micro_runs_the_experiments_own_stages_on_the_micro_model_and_small_splits(name):
    own, micro = load_experiment(name), load_experiment(name, preset=["micro"])
    assert [s.stage for s in micro.stages] == [s.stage for s in own.stages]
    for stage, mine in zip(micro.stages, own.stages):
        assert stage.objective == mine.objective and stage.data.sampling == mine.data.sampling
        assert stage.model.path == "storage/models_v2/micro-mtp"
        if stage.objective == "rho1":
            assert stage.rho1.reference == "storage/models_v2/micro-ref"
        else:  # the preset names the rho1 section for every experiment: only a rho1 stage keeps it
            assert "rho1" not in stage.to_dict()
        assert stage.data.train_file == "storage/datasets_v2/smoke/processed/train_small.jsonl"
        assert stage.data.valid_file == "storage/datasets_v2/smoke/processed/valid_small.jsonl"
        assert stage.launch_world_size() == 1 and stage.train.device == "auto"


def test_presets_apply_in_order_micro_then_local_light():
    critic = load_experiment("verifiable", ["train.max_steps=3"], preset=["micro", "local-light"]).stages[0]
    assert critic.model.path.endswith("micro-mtp") and critic.data.split_variant == "small"  # micro
    assert critic.train.batch_size == 1 and critic.data.valid_samples == 16  # local-light over micro
    assert critic.train.max_steps == 3  # --set over both


# ---------------------------------------------------------------- objective sections (wmtp.train.objectives)


def test_a_stage_spec_carries_only_its_objectives_section():
    sections = {
        s.stage: [k for k in s.to_dict() if k in ("td", "critic", "rho1")] for s in load_experiment("smoke").stages
    }
    assert sections == {"critic": ["critic"], "verifiable": ["td"], "baseline": [], "rho1": ["rho1"]}
    verifiable = load_experiment("verifiable").stages[1]
    assert list(verifiable.to_dict())[:7] == ["experiment", "stage", "objective", "model", "data", "train", "td"]


def test_experiment_wide_settings_of_an_objective_reach_its_stages_only():
    stages = {s.stage: s for s in load_experiment("smoke", ["td.beta=0.5", "critic.gamma=0.9"]).stages}
    assert stages["verifiable"].td.beta == 0.5 and stages["critic"].critic.gamma == 0.9
    assert not hasattr(stages["baseline"], "td") and not hasattr(stages["rho1"], "critic")


@pytest.mark.parametrize(
    "experiment, override, key, objectives",
    [
        ("baseline", "td.beta=2", "td.beta", "baseline"),
        ("verifiable", "rho1.mode=tokenskip", "rho1.mode", "critic, verifiable"),
        ("rho1", "critic={gamma: 0.5}", "critic.gamma", "rho1"),
    ],
)
def test_a_setting_of_an_objective_no_stage_runs_is_refused(experiment, override, key, objectives):
    with pytest.raises(SpecError) as caught:
        load_experiment(experiment, [override])
    assert str(caught.value).endswith(
        f"jobs/{experiment}.yaml, from --set {override}: {key}: a setting of the "
        f"{key.split('.')[0].replace('td', 'verifiable')} objective, which no stage of "
        f"experiment {experiment} runs (its objectives: {objectives})"
    )


def test_a_section_in_an_experiment_file_or_a_stages_own_layer_must_be_its_objectives(tmp_path):
    spec = tmp_path / "mine.yaml"
    spec.write_text("stages: [baseline]\ntd: {beta: 2}\n")
    with pytest.raises(
        SpecError,
        match=r"mine\.yaml: td\.beta: a setting of the verifiable objective, which no stage "
        r"of experiment mine runs \(its objectives: baseline\)",
    ):
        load_experiment(str(spec))
    spec.write_text("stages: [critic, verifiable]\nper_stage:\n  critic:\n    td: {beta: 2}\n")
    with pytest.raises(
        SpecError,
        match=r"mine\.yaml per_stage\.critic: td\.beta: a setting of the verifiable "
        r"objective; stage critic runs the critic objective",
    ):
        load_experiment(str(spec))
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "baseline.yaml").write_text("objective: baseline\nrho1: {mode: tokenskip}\n")
    spec.write_text("stages: [baseline, rho1]\n")
    with pytest.raises(
        SpecError,
        match=r"stages/baseline\.yaml: rho1\.mode: a setting of the rho1 objective; "
        r"stage baseline runs the baseline objective",
    ):
        load_experiment(str(spec))


def test_a_typo_in_a_section_no_stage_uses_is_still_named(tmp_path):
    """A preset is written for every experiment: its rho1 section is dropped from a baseline run, not unread."""
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "mine.yaml").write_text("rho1: {referense: x}\n")
    spec = tmp_path / "exp.yaml"
    spec.write_text("stages: [baseline]\n")
    with pytest.raises(SpecError, match=r"presets/mine\.yaml: rho1\.referense: unknown key"):
        load_experiment(str(spec), preset="mine")
    (tmp_path / "presets" / "mine.yaml").write_text("rho1: {reference: x}\n")
    assert "rho1" not in load_experiment(str(spec), preset="mine").stages[0].to_dict()


def test_an_unknown_objective_lists_the_registered_ones():
    with pytest.raises(
        SpecError,
        match=r"\(stage baseline\), from --set objective=focal: objective: Input should be "
        r"'baseline', 'critic', 'rho1' or 'verifiable' \(got 'focal'\)",
    ):
        load_experiment("baseline", ["objective=focal"])


@pytest.mark.parametrize(
    "experiment, monitor",
    [
        ("baseline", "val/weight/mean"),
        ("critic", "val/value/pred_var"),
        ("rho1", "val/rho1/kept_fraction"),
        ("verifiable", "val/loss/td"),
    ],
)
def test_a_monitor_that_is_not_a_validation_loss_is_refused_when_the_spec_loads(experiment, monitor):
    with pytest.raises(SpecError, match=f"early_stopping.monitor: '{monitor}' is not a validation loss of the"):
        load_experiment(experiment, [f"early_stopping.monitor={monitor}"])
    load_experiment(experiment, ["early_stopping.monitor=val/loss"])  # every objective's own loss
