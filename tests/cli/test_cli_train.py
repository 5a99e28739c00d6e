"""`wmtp train` through CliRunner: dry-run, one-line errors, secrets from --env-file never printed."""

import pytest
from typer.testing import CliRunner

from wmtp_cli.main import app

runner = CliRunner()


def test_dry_run_prints_every_resolved_stage():
    result = runner.invoke(app, ["train", "verifiable", "--dry-run", "--set", "train.lr=3e-5"])
    assert result.exit_code == 0, result.output
    assert "# stage: critic" in result.output and "# stage: verifiable" in result.output
    assert "lr: 3.0e-05" in result.output


def test_bad_override_is_one_line_exit_2():
    result = runner.invoke(app, ["train", "baseline", "--dry-run", "--set", "train.bogus=1"])
    assert result.exit_code == 2
    assert "train.bogus: unknown key" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_missing_spec_file_is_named(tmp_path):
    result = runner.invoke(app, ["train", str(tmp_path / "absent.yaml"), "--dry-run"])
    assert result.exit_code == 2 and "absent.yaml: spec file not found" in result.output


def test_env_file_secrets_are_loaded_but_never_printed(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    env_file = tmp_path / ".env"
    env_file.write_text("MLFLOW_TRACKING_PASSWORD='s3cr3t-value-7781'\n")
    result = runner.invoke(app, ["train", "baseline", "--dry-run", "--env-file", str(env_file)])
    assert result.exit_code == 0
    assert "s3cr3t-value-7781" not in result.output
    assert "MLFLOW_TRACKING_PASSWORD" in result.output  # the secret's name is referenced in env.secrets


def test_malformed_env_file_names_file_and_line(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("# comment\nGOOD=1\nnot a pair\n")
    result = runner.invoke(app, ["train", "baseline", "--dry-run", "--env-file", str(env_file)])
    assert result.exit_code == 2 and f"{env_file}:3: expected KEY=VALUE" in result.output


def test_a_missing_model_is_one_line_before_torchrun_and_before_any_run_dir(tmp_path):
    # The defaults ask for FSDP × 4 processes: the check must run in `wmtp train`, not in 4 ranks.
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["train", "baseline", "--set", "model.path=/nonexistent", "--run-dir", str(run_dir)])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        "error: stage baseline: model.path: /nonexistent does not exist "
        "(expected a model dir (wmtp model convert-meta / micro))"
    )
    assert "launching" not in result.output and not run_dir.exists()


def test_missing_data_and_reference_are_named(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    data = tmp_path / "train.jsonl"
    data.write_text("")
    cases = [
        (["baseline", f"model.path={model}", f"data.train={tmp_path / 'absent.jsonl'}"], "data.train"),
        (
            ["baseline", f"model.path={model}", f"data.train={data}", f"data.valid={tmp_path / 'absent.jsonl'}"],
            "data.valid",
        ),
        (
            [
                "rho1",
                f"model.path={model}",
                f"data.train={data}",
                "data.valid=null",
                f"rho1.reference={tmp_path / 'absent-ref'}",
            ],
            "rho1.reference",
        ),
    ]
    for (spec, *overrides), key in cases:
        args = ["train", spec, "--run-dir", str(tmp_path / "run"), "--set", "distributed.nproc_per_node=1"]
        for o in overrides:
            args += ["--set", o]
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert f": {key}: {tmp_path / 'absent'}" in result.output and len(result.output.strip().splitlines()) == 1
        assert not (tmp_path / "run").exists()


def test_a_run_dir_started_with_another_spec_is_refused_before_torchrun(tmp_path):
    # The defaults ask for FSDP × 4 processes: refused once, here, rather than by each of 4 ranks.
    from wmtp.train.config import dump_spec, load_experiment

    model, data = tmp_path / "model", tmp_path / "train.jsonl"
    model.mkdir()
    data.write_text("")
    inputs = [f"model.path={model}", f"data.train={data}", "data.valid=null"]
    run_dir = tmp_path / "run"
    (run_dir / "baseline").mkdir(parents=True)
    (run_dir / "baseline" / "spec.yaml").write_text(dump_spec(load_experiment("baseline", inputs).stages[0]))
    args = ["train", "baseline", "--run-dir", str(run_dir)]
    for o in [*inputs, "train.lr=3e-5", "targets.k8s.namespace=elsewhere"]:
        args += ["--set", o]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        f"error: stage baseline: run dir {run_dir} was started with another spec: train.lr 1e-05 → 3e-05; "
        "resume with the same spec, or start a new run dir (--run-dir NEW or leave --run-dir out)"
    )
    assert "launching" not in result.output
    assert "lr: 1.0e-05" in (run_dir / "baseline" / "spec.yaml").read_text()


def test_dry_run_shows_a_tracking_uri_without_its_credentials():
    result = runner.invoke(
        app,
        [
            "train",
            "baseline",
            "--dry-run",
            "--set",
            "tracking.uri=http://user:s3cret@mlflow.example.org:5000/?token=t0ken",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "uri: http://***@mlflow.example.org:5000/?***" in result.output
    assert "s3cret" not in result.output and "t0ken" not in result.output


def test_set_holding_a_secret_value_is_refused_without_echoing_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw-4471")  # short: equal to it is enough
    result = runner.invoke(app, ["train", "baseline", "--dry-run", "--set", "tracking.run_name=pw-4471"])
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: --set tracking.run_name: holds the value of secret "
        "MLFLOW_TRACKING_PASSWORD; secrets are referenced by name (env.secrets), "
        "never written — remove it from --set"
    )

    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    env_file = tmp_path / ".env"
    env_file.write_text("HF_TOKEN=hf_abcdefghijklmnop\n")
    run_dir = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train",
            "baseline",
            "--env-file",
            str(env_file),
            "--run-dir",
            str(run_dir),
            "--set",
            "tracking.run_name=mine-hf_abcdefghijklmnop",
        ],
    )
    assert result.exit_code == 2 and "holds the value of secret HF_TOKEN" in result.output
    assert "hf_abcdefghijklmnop" not in result.output and not run_dir.exists()
    monkeypatch.delenv("HF_TOKEN", raising=False)  # load_env_file exported it


def test_stage_dry_run_prints_only_that_stage():
    result = runner.invoke(app, ["train", "smoke", "--stage", "verifiable", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert result.output.count("# stage: ") == 1 and result.output.startswith("# stage: verifiable\n")


def test_unknown_stage_is_one_line_listing_the_stages(tmp_path):
    result = runner.invoke(app, ["train", "smoke", "--stage", "critc", "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: --stage critc: not a stage of experiment smoke; its stages: critic, verifiable, baseline, rho1"
    )
    assert not (tmp_path / "run").exists()


def test_stage_is_parsed_by_the_torchrun_entry_point():
    """`wmtp train` hands --stage to `python -m wmtp.train` when it launches torchrun: a real process."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "wmtp.train", "smoke", "--stage", "rho1", "--stage", "critic", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stdout.splitlines() if line.startswith("# stage: ")] == [
        "# stage: critic",
        "# stage: rho1",
    ]


# ---------------------------------------------------------------- secrets, hardened

REFUSED = "; secrets are referenced by name (env.secrets), never written — remove it from --set"
SECRET = "Tok_8c1f2e9aXq"


@pytest.mark.parametrize(
    "name, value, override, expected",
    [
        # The spec error that used to come first quoted the value back: `train.lr: … (got 'pw-4471')`.
        (
            "MLFLOW_TRACKING_PASSWORD",
            "pw-4471",
            "train.lr=pw-4471",
            "--set train.lr: holds the value of secret MLFLOW_TRACKING_PASSWORD",
        ),
        ("HF_TOKEN", SECRET, f"train.lr={SECRET}", "--set train.lr: holds the value of secret HF_TOKEN"),
        ("HF_TOKEN", SECRET, f"{SECRET}=1", "--set ***: holds the value of secret HF_TOKEN"),
        (
            "VESSL_ACCESS_TOKEN",
            "exported-9c8b7a6d5e",
            "tracking.run_name=exported-9c8b7a6d5e",
            "--set tracking.run_name: holds the value of secret VESSL_ACCESS_TOKEN",
        ),
        (
            "AWS_SESSION_TOKEN",
            "exported-9c8b7a6d5e",
            "tracking.run_name=x-exported-9c8b7a6d5e",
            "--set tracking.run_name: holds the value of secret AWS_SESSION_TOKEN",
        ),
        (
            "HF_TOKEN",
            'tok"9f3kQ2xZ',
            'tracking.run_name="tok\\"9f3kQ2xZ"',
            "--set tracking.run_name: holds the value of secret HF_TOKEN",
        ),  # YAML-escaped in --set: seen as the trainer will read it
    ],
)
def test_train_refuses_a_secret_in_set_before_any_spec_error_can_quote_it(
    name, value, override, expected, clean_env, monkeypatch, tmp_path
):
    monkeypatch.setenv(name, value)
    result = runner.invoke(app, ["train", "baseline", "--dry-run", "--set", override])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {expected}{REFUSED}"
    assert value not in result.output


def test_train_errors_never_echo_a_secret(clean_env, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    for args in (["--preset", SECRET], ["--stage", SECRET]):
        result = runner.invoke(app, ["train", "smoke", "--dry-run", "--run-dir", str(tmp_path / "run"), *args])
        assert result.exit_code == 2 and SECRET not in result.output and "***" in result.output, result.output


def test_micro_is_a_preset_before_preset_and_the_torchrun_entry_point_takes_both():
    """`wmtp train … --micro --preset local-light` = the micro layer then local-light; `python -m wmtp.train`
    (what torchrun runs) takes the presets repeated, as `wmtp train` passes them on."""
    import subprocess
    import sys

    result = runner.invoke(app, ["train", "verifiable", "--micro", "--preset", "local-light", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "split_variant: small" in result.output and "batch_size: 1\n" in result.output
    entry = subprocess.run(
        [sys.executable, "-m", "wmtp.train", "verifiable", "--preset", "micro", "--preset", "local-light", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert entry.returncode == 0, entry.stderr
    assert entry.stdout == result.stdout


def test_micro_with_a_stage_that_needs_an_unfinished_one_builds_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "verifiable", "--micro", "--stage", "verifiable", "--run-dir", "run"])
    assert result.exit_code == 2
    assert result.output.startswith("error: stage verifiable needs the final checkpoint of stage critic")
    assert list(tmp_path.iterdir()) == []  # refused before the micro model or the data was built
