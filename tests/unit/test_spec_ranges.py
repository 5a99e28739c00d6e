"""Every number of a spec is range-checked when the spec loads: one line naming the key, the value and
what is expected, before any model loads or any directory is made (`wmtp train --dry-run` included).

BAD walks every rule (field ranges, finiteness, rules across keys); GOOD holds the boundary values that
must still load; `test_every_numeric_key_has_a_rule` keeps BAD in step with the schema.
"""

from __future__ import annotations

import typing

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from wmtp.train.config import SpecError, load_experiment, stage_spec_classes

# (overrides of jobs/smoke.yaml, key path the error names, the value it reports after "got ").
# smoke: batch_size 4, one process, data.max_length 512, data.valid_samples 32, td.w ∈ [0.1, 5], rho1.w ∈ [0, 3].
BAD = [
    # train
    (["train.num_epochs=0"], "train.num_epochs", "0"),
    (["train.max_steps=-3"], "train.max_steps", "-3"),
    (["train.max_steps=0"], "train.max_steps", "0"),
    (["train.peak_tflops=0"], "train.peak_tflops", "0"),
    (["train.peak_tflops=.inf"], "train.peak_tflops", "inf"),
    (["train.batch_size=0"], "train.batch_size", "0"),
    (["train.grad_accum_steps=0"], "train.grad_accum_steps", "0"),
    (["train.lr=-1e-3"], "train.lr", "-0.001"),
    (["train.lr=0"], "train.lr", "0"),
    (["train.lr=.nan"], "train.lr", "nan"),
    (["train.lr=nan"], "train.lr", "'nan'"),
    (["train.lr=.inf"], "train.lr", "inf"),
    (["train.min_lr_ratio=-0.1"], "train.min_lr_ratio", "-0.1"),
    (["train.min_lr_ratio=1.5"], "train.min_lr_ratio", "1.5"),
    (["train.warmup_steps=-1"], "train.warmup_steps", "-1"),
    (["train.weight_decay=-0.01"], "train.weight_decay", "-0.01"),
    (["train.weight_decay=.nan"], "train.weight_decay", "nan"),
    (["train.betas=[-0.1, 0.95]"], "train.betas.0", "-0.1"),
    (["train.betas=[0.9, 1.0]"], "train.betas.1", "1.0"),
    (["train.betas=[0.9, .nan]"], "train.betas.1", "nan"),
    (["train.grad_clip=0"], "train.grad_clip", "0"),
    (["train.grad_clip=-1.0"], "train.grad_clip", "-1.0"),
    (["train.head_weights=[1, -0.5]"], "train.head_weights.1", "-0.5"),
    (["train.head_weights=[0, 0]"], "train.head_weights", "[0, 0]"),
    (["train.head_weights=[]"], "train.head_weights", "[]"),
    (["train.seed=-1"], "train.seed", "-1"),
    (["train.log_interval=0"], "train.log_interval", "0"),
    (["train.eval_interval=0"], "train.eval_interval", "0"),
    (["train.save_interval=0"], "train.save_interval", "0"),
    (["train.keep_last=-1"], "train.keep_last", "-1"),
    # data
    (["data.max_length=1"], "data.max_length", "1"),
    (["data.valid_samples=0"], "data.valid_samples", "0"),
    (["data.valid_samples=3"], "data.valid_samples", "3"),  # < 1 rank × batch 4: validation never runs
    (["data.num_workers=-1"], "data.num_workers", "-1"),
    (["data.sampling.n_samples=0"], "data.sampling.n_samples", "0"),
    (["data.sampling.correct_ratio=1.5"], "data.sampling.correct_ratio", "1.5"),
    (["data.sampling.correct_ratio=.nan"], "data.sampling.correct_ratio", "nan"),
    (["data.sampling.curriculum_bins={low: [5, 2]}"], "data.sampling.curriculum_bins", "{'low': [5, 2]}"),
    (
        ["data.sampling.curriculum_schedule=[{until: 0, weights: {low: 1}}]"],
        "data.sampling.curriculum_schedule.0.until",
        "0",
    ),
    (
        ["data.sampling.curriculum_schedule=[{until: 1.0, weights: {low: .inf}}]"],
        "data.sampling.curriculum_schedule.0.weights.low",
        "inf",
    ),
    # model
    (["model.max_seq_len=0"], "model.max_seq_len", "0"),
    (["model.max_seq_len=100"], "model.max_seq_len", "100"),  # < data.max_length 512
    (["data.max_length=1024", "model.max_seq_len=512"], "model.max_seq_len", "512"),
    # td
    (["td.gamma=-0.1"], "td.gamma", "-0.1"),
    (["td.gamma=1.1"], "td.gamma", "1.1"),
    (["td.beta=0"], "td.beta", "0"),
    (["td.beta=.nan"], "td.beta", "nan"),
    (["td.w_min=-0.1"], "td.w_min", "-0.1"),
    (["td.w_min=5"], "td.w_min", "5.0"),  # = w_max
    (["td.w_max=0.05"], "td.w_min", "0.1"),  # < w_min
    (["td.value_coef=-1"], "td.value_coef", "-1"),
    (["td.huber_delta=0"], "td.huber_delta", "0"),
    (["td.value_clip=0"], "td.value_clip", "0"),
    # critic
    (["critic.gamma=1.5"], "critic.gamma", "1.5"),
    (["critic.huber_delta=0"], "critic.huber_delta", "0"),
    # rho1
    (["rho1.w_min=-1"], "rho1.w_min", "-1"),
    (["rho1.w_min=3"], "rho1.w_min", "3.0"),  # = w_max
    (["rho1.w_max=0"], "rho1.w_min", "0.0"),
    (["rho1.keep_ratio=0"], "rho1.keep_ratio", "0"),
    (["rho1.keep_ratio=1.5"], "rho1.keep_ratio", "1.5"),
    (["rho1.temperature=0"], "rho1.temperature", "0"),
    # early_stopping
    (["early_stopping.patience=0"], "early_stopping.patience", "0"),
    (["early_stopping.min_delta=-0.1"], "early_stopping.min_delta", "-0.1"),
    (["early_stopping.grad_norm_window=0"], "early_stopping.grad_norm_window", "0"),
    (["early_stopping.grad_norm_threshold=0"], "early_stopping.grad_norm_threshold", "0"),
    (["early_stopping.grad_norm_threshold_ratio=0"], "early_stopping.grad_norm_threshold_ratio", "0"),
    (["early_stopping.grad_norm_threshold_ratio=1.5"], "early_stopping.grad_norm_threshold_ratio", "1.5"),
    (["early_stopping.pred_var_min=-1"], "early_stopping.pred_var_min", "-1"),
    (["early_stopping.pred_var_max=0"], "early_stopping.pred_var_max", "0"),
    (["early_stopping.pred_var_min=2", "early_stopping.pred_var_max=1"], "early_stopping.pred_var_min", "2.0"),
    # distributed, tracking
    (["distributed.nproc_per_node=0"], "distributed.nproc_per_node", "0"),
    (["distributed.preemption_grace_s=0"], "distributed.preemption_grace_s", "0"),
    (["tracking.buffer_size=0"], "tracking.buffer_size", "0"),
    # eval
    (["eval.n=0"], "eval.n", "0"),
    (["eval.ks=[0]"], "eval.ks", "[0]"),
    (["eval.ks=[3]"], "eval.ks", "[3]"),  # > n
    (["eval.max_new_tokens=0"], "eval.max_new_tokens", "0"),
    (["eval.temperature=-1"], "eval.temperature", "-1"),
    (["eval.temperature=.nan"], "eval.temperature", "nan"),
    (["eval.top_p=0"], "eval.top_p", "0"),
    (["eval.top_p=1.5"], "eval.top_p", "1.5"),
    (["eval.limit=0"], "eval.limit", "0"),
    (["eval.timeout_s=0"], "eval.timeout_s", "0"),
    (["eval.batch_size=0"], "eval.batch_size", "0"),
]

# Values on the edge of each range: they must load.
GOOD = [
    ["train.max_steps=1", "train.num_epochs=1", "train.batch_size=1", "train.grad_accum_steps=1"],
    ["train.lr=1e-12", "train.min_lr_ratio=0", "train.warmup_steps=0", "train.weight_decay=0"],
    ["train.min_lr_ratio=1", "train.betas=[0, 0.999]", "train.grad_clip=null", "train.max_steps=null"],
    ["train.head_weights=[1, 0, 0, 0]", "train.seed=0", "train.keep_last=0"],
    ["train.log_interval=1", "train.eval_interval=1", "train.save_interval=1"],
    ["data.max_length=2", "data.num_workers=0", "data.valid_samples=4"],  # = 1 rank × batch 4
    ["data.valid_samples=null"],
    ["data.valid=null", "data.valid_samples=1"],  # no validation: nothing to turn off
    ["distributed.nproc_per_node=2", "train.batch_size=16", "data.valid_samples=32"],
    ["model.max_seq_len=512"],  # = data.max_length
    ["td.gamma=0", "td.w_min=0", "td.w_max=0.001", "td.value_coef=0", "td.value_clip=null"],
    ["td.gamma=1", "critic.gamma=0", "rho1.w_min=0", "rho1.w_max=0.001", "rho1.keep_ratio=1"],
    ["early_stopping.patience=1", "early_stopping.min_delta=0", "early_stopping.grad_norm_window=1"],
    ["early_stopping.grad_norm_threshold=1e-9", "early_stopping.grad_norm_threshold_ratio=1"],
    ["early_stopping.pred_var_min=0", "early_stopping.pred_var_max=0.001"],
    ["tracking.buffer_size=1", "eval.n=2", "eval.ks=[1, 2]", "eval.temperature=0.8", "eval.top_p=1"],
]


@pytest.mark.parametrize("overrides, key, value", BAD, ids=[" ".join(case[0]) for case in BAD])
def test_a_value_out_of_range_is_one_line_naming_key_and_value(overrides, key, value):
    with pytest.raises(SpecError) as caught:
        load_experiment("smoke", overrides)
    message = str(caught.value)
    assert "\n" not in message
    assert f": {key}: " in message, message
    assert f"(got {value})" in message, message
    assert ", from --set " in message, message  # the override that broke the rule is named


@pytest.mark.parametrize("overrides", GOOD, ids=[" ".join(case) for case in GOOD])
def test_values_on_the_edge_of_each_range_load(overrides):
    assert load_experiment("smoke", overrides).stages


def test_a_rule_across_keys_says_what_the_other_key_is():
    with pytest.raises(SpecError, match=r"td\.w_min: should be less than w_max, which is 0\.05 \(got 0\.1\)"):
        load_experiment("smoke", ["td.w_max=0.05"])
    with pytest.raises(SpecError, match=r"data\.valid_samples: .*ranks × train\.batch_size = 1 × 4 = 4"):
        load_experiment("smoke", ["data.valid_samples=3"])


def numeric_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Key paths of every field of `model` (nested sections included) that holds a number."""
    keys = set()
    for name, info in model.model_fields.items():
        types = flatten(info.annotation)
        sections = [t for t in types if isinstance(t, type) and issubclass(t, BaseModel)]
        if info.annotation in sections or (typing.get_origin(info.annotation) is typing.Union and sections):
            for section in sections:  # a section (Optional or not): its own keys
                keys |= numeric_keys(section, f"{prefix}{name}.")
        elif any(t in (int, float) for t in types) or any(numeric_keys(s) for s in sections):
            keys.add(prefix + name)  # a number, or a list / mapping holding numbers
    return keys


def flatten(annotation) -> list:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Annotated:
        return flatten(args[0])
    return [annotation] + [t for arg in args for t in flatten(arg)]


def test_every_numeric_key_has_a_rule():
    schema_keys = set().union(*(numeric_keys(member) for member in stage_spec_classes().values()))
    assert {"train.lr", "td.w_max", "data.sampling.correct_ratio", "eval.top_p"} <= schema_keys
    tested = {override.partition("=")[0] for overrides, _, _ in BAD for override in overrides}
    missing = sorted(schema_keys - tested)
    assert not missing, f"numeric keys without a refused value in BAD: {missing}"


def test_dry_run_with_a_bad_value_is_one_line_exit_2_and_makes_no_directory(tmp_path, monkeypatch):
    from wmtp_cli.main import app

    monkeypatch.chdir(tmp_path)  # output.root is relative: storage/checkpoints under the cwd
    runner = CliRunner()
    for args in (["--dry-run"], ["--run-dir", str(tmp_path / "run")]):
        result = runner.invoke(app, ["train", "smoke", *args, "--set", "train.save_interval=0"])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.output
        assert "train.save_interval: Input should be greater than or equal to 1 (got 0)" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_validation_rows_are_checked_for_the_ranks_that_will_run(tmp_path, monkeypatch):
    """32 rows, batch 32: one rank validates; `wmtp train` launching 2 DDP ranks would not (refused in
    the dry run too), and a run started some other way with 2 ranks is refused before its run dir."""
    from wmtp.train.config import check_world_size
    from wmtp_cli.main import app

    monkeypatch.chdir(tmp_path)
    overrides = ["train.batch_size=32", "data.valid_samples=32", "distributed.nproc_per_node=2"]
    for strategy, code in [("none", 0), ("ddp", 2)]:
        result = CliRunner().invoke(
            app,
            [
                "train",
                "smoke",
                "--dry-run",
                "--set",
                f"distributed.strategy={strategy}",
                *(a for o in overrides for a in ("--set", o)),
            ],
        )
        assert result.exit_code == code, result.output
    assert "stage critic: data.valid_samples: " in result.output and "2 × 32 = 64" in result.output
    assert "with 2 ranks" in result.output and len(result.output.strip().splitlines()) == 1
    experiment = load_experiment("smoke", overrides)
    check_world_size(experiment, 1)
    with pytest.raises(SpecError, match="with 2 ranks"):
        check_world_size(experiment, 2)
    assert list(tmp_path.iterdir()) == []
