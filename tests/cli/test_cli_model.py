"""`wmtp` top level and `wmtp model …` through Typer's CliRunner."""

import shutil

from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


def test_help_lists_command_groups_and_version():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "model" in result.output
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.output.startswith("wmtp ")


def test_convert_meta_then_verify(meta_tiny_dir, tmp_path):
    result = runner.invoke(app, ["model", "convert-meta", str(meta_tiny_dir), str(tmp_path / "tiny")])
    assert result.exit_code == 0, result.output
    verify = runner.invoke(app, ["model", "verify", str(tmp_path / "tiny")])
    assert verify.exit_code == 0 and "4 heads" in verify.output


def test_bad_checkpoint_is_one_line_without_traceback(meta_tiny_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(meta_tiny_dir, broken)
    (broken / "consolidated.pth").write_bytes(b"garbage")
    result = runner.invoke(app, ["model", "convert-meta", str(broken), str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "consolidated.pth: cannot be read" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
