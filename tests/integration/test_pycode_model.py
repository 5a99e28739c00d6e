"""`wmtp model pycode` end to end at a tiny size: tokenizer, dataset, training by the real loop, report,
publication (atomic, reused, refused, --force), on 60 files of this interpreter's standard library."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wmtp.errors import WmtpError
from wmtp.train import pycode_model
from wmtp.train.pycode_model import PycodeOptions, build_pycode_model

pytestmark = pytest.mark.usefixtures("no_tracking_env")

TINY = dict(
    limit=60,
    vocab_size=512,
    dim=64,
    trunk_layers=2,
    head_layers=2,
    steps=24,
    valid_rows=16,
    prompts=3,
    max_new_tokens=16,
)


def tiny_options(root: Path, **changes) -> PycodeOptions:
    overrides = (
        f"tracking.uri=sqlite:///{root / 'mlflow.db'}",
        "train.batch_size=2",
        "data.max_length=128",
        "data.valid_samples=8",
        "train.lr=3.0e-3",
        "train.warmup_steps=2",
        "train.log_interval=6",
        "train.eval_interval=12",
        "train.save_interval=12",
    )
    return PycodeOptions(
        **{"out": root / "models" / "pycode-tiny", "data_dir": root / "data", "overrides": overrides, **TINY, **changes}
    )


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(options, result, log lines) of one tiny build."""
    root = tmp_path_factory.mktemp("pycode")
    lines: list[str] = []
    options = tiny_options(root)
    return options, build_pycode_model(options, log=lines.append), lines


@pytest.mark.slow
def test_the_output_is_a_trained_model_dir_with_its_report(tiny):
    from wmtp.model import load_model, load_tokenizer

    options, result, lines = tiny
    model = load_model(options.out, verify=True)
    assert (model.args.n_layers, model.n_future_tokens, model.args.dim) == (4, 2, 64)
    assert load_tokenizer(options.out).vocab_size == 512
    report = json.loads((options.out / "report.json").read_text())
    assert report == json.loads(json.dumps(result.report)) and report["options"] == options.identity()
    assert report["training"]["steps"] == 24 and report["training"]["tokens"] > 0
    assert (options.out / "training" / "metrics.jsonl").is_file() and (options.out / "training" / "spec.yaml").is_file()
    assert leftovers(options.out.parent) == []  # the staging dir is gone
    assert any(line.startswith("training 24 steps of jobs/pycode.yaml") for line in lines)


@pytest.mark.slow
def test_training_lowers_every_heads_validation_loss_and_decoding_stats_are_sane(tiny):
    _, result, _ = tiny
    evaluation = result.report["evaluation"]
    init, trained = evaluation["random_init"], evaluation["trained"]
    assert len(trained["validation"]["ce_per_head"]) == 2
    for before, after in zip(init["validation"]["ce_per_head"], trained["validation"]["ce_per_head"]):
        assert after < before
    for stats in (init["decoding"], trained["decoding"]):
        assert stats["prompts"] == 3 and stats["drafted"] > 0
        assert 0.0 <= stats["acceptance_rate"] <= 1.0
        assert 1.0 <= stats["tokens_per_forward"] <= 2.0  # at most one draft + head 1's token per forward
        assert all(0.0 <= x <= 1.0 for x in trained["validation"]["top1_per_head"])


@pytest.mark.slow
def test_the_same_options_reuse_the_build_and_other_options_are_refused(tiny):
    options, result, _ = tiny
    before = (options.out / "report.json").stat().st_mtime_ns
    again = build_pycode_model(options, log=lambda _: None)
    assert again.reused and again.report == json.loads(json.dumps(result.report))
    with pytest.raises(WmtpError, match="already built with other options"):
        build_pycode_model(tiny_options(options.out.parent.parent, steps=25), log=lambda _: None)
    assert (options.out / "report.json").stat().st_mtime_ns == before


@pytest.mark.slow
def test_a_failure_mid_way_leaves_no_output_and_keeps_an_existing_one(tiny, tmp_path, monkeypatch):
    options, _, _ = tiny

    def fail(*_args, **_kwargs):
        raise RuntimeError("killed mid-way")

    monkeypatch.setattr(pycode_model, "train_model", fail)  # after the init model was written to staging
    fresh = tiny_options(options.out.parent.parent, out=tmp_path / "models" / "pycode-new")
    with pytest.raises(RuntimeError, match="mid-way"):
        build_pycode_model(fresh, log=lambda _: None)
    assert not fresh.out.exists() and leftovers(fresh.out.parent) == []
    before = (options.out / "report.json").read_bytes()
    with pytest.raises(RuntimeError, match="mid-way"):
        build_pycode_model(options, force=True, log=lambda _: None)
    assert (options.out / "report.json").read_bytes() == before and leftovers(options.out.parent) == []


@pytest.mark.slow
def test_the_cli_prints_the_summary_of_a_reused_build(tiny):
    from wmtp_cli.main import app

    options, _, _ = tiny
    args = ["model", "pycode", "--out", str(options.out), "--data-dir", str(options.data_dir)]
    for key, value in TINY.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    for override in options.overrides:
        args += ["--set", override]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"reused {options.out}" in result.output
    assert "2 trunk + 2 head blocks, dim 64, vocab 512" in result.output
    assert "self-speculative greedy decoding, 3 held-out test prompts" in result.output
    assert "CE trained" in result.output and "head 2" in result.output
    refused = CliRunner().invoke(app, args + ["--steps", "5"])
    assert refused.exit_code == 2 and "already built with other options" in refused.output


def test_help_names_the_options():
    from wmtp_cli.main import app

    result = CliRunner().invoke(app, ["model", "pycode", "--help"])
    assert result.exit_code == 0
    for option in ("--steps", "--vocab-size", "--dim", "--trunk-layers", "--head-layers", "--force", "--set"):
        assert option in result.output
