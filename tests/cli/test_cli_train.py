"""`wmtp train` through CliRunner: dry-run, one-line errors, secrets from --env-file never printed."""

from typer.testing import CliRunner

from cli.main import app

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
        "(expected a model dir (wmtp model convert-meta / micro))")
    assert "launching" not in result.output and not run_dir.exists()


def test_missing_data_and_reference_are_named(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    data = tmp_path / "train.jsonl"
    data.write_text("")
    cases = [
        (["baseline", f"model.path={model}", f"data.train={tmp_path / 'absent.jsonl'}"], "data.train"),
        (["baseline", f"model.path={model}", f"data.train={data}", f"data.valid={tmp_path / 'absent.jsonl'}"],
         "data.valid"),
        (["rho1", f"model.path={model}", f"data.train={data}", "data.valid=null",
          f"rho1.reference={tmp_path / 'absent-ref'}"], "rho1.reference"),
    ]
    for (spec, *overrides), key in cases:
        args = ["train", spec, "--run-dir", str(tmp_path / "run"), "--set", "distributed.nproc_per_node=1"]
        for o in overrides:
            args += ["--set", o]
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert f": {key}: {tmp_path / 'absent'}" in result.output and len(result.output.strip().splitlines()) == 1
        assert not (tmp_path / "run").exists()
