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
