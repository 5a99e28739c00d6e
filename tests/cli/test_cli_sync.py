"""`wmtp sync-storage` through Typer's CliRunner: output, exit codes, one-line errors, no secrets."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from tests.s3_server import make_tree
from wmtp_cli.main import app

runner = CliRunner()
SECRET = "wJalrXUtnFEMI-this-secret-must-never-be-printed"


def invoke(*args: str):
    return runner.invoke(app, ["sync-storage", *args])


def one_error_line(result) -> str:
    """The error as the user sees it: exit 2, exactly one line, no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_help_lists_the_options():
    result = invoke("--help")
    assert result.exit_code == 0
    for option in ("--dest", "--endpoint-url", "--dry-run", "--delete", "--direction", "--verify"):
        assert option in result.output


def test_sync_up_then_noop_then_dry_run(s3, bucket, moto_endpoint, s3_env, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)  # moto accepts any key; it must not leak
    root = make_tree(s3_env / "storage", {"models_v2/m/w.bin": 20_000, "datasets_v2/d.jsonl": 500, "x.txt": 3})
    dest = f"s3://{bucket}/team"
    first = invoke("--root", str(root), "--dest", dest, "--endpoint-url", moto_endpoint)
    assert first.exit_code == 0, first.output
    assert "uploaded 3 file(s) (20.0 KiB)" in first.output and f"→ {dest}" in first.output
    assert "manifest written" in first.output

    again = invoke("--root", str(root), "--dest", dest, "--endpoint-url", moto_endpoint)
    assert again.exit_code == 0 and "uploaded 0 file(s)" in again.output and "3 unchanged" in again.output

    (root / "x.txt").write_text("four")
    dry = invoke("--root", str(root), "--dest", dest, "--endpoint-url", moto_endpoint, "--dry-run")
    assert dry.exit_code == 0
    assert "would upload  x.txt  (4 B, changed)" in dry.output
    assert "would upload 1 file(s) (4 B), delete 0, 2 unchanged; nothing was transferred" in dry.output
    assert len(s3.get_object(Bucket=bucket, Key="team/x.txt")["Body"].read()) == 3  # still the old content

    pulled = s3_env / "pulled"
    down = invoke(
        "--root", str(pulled), "--dest", dest, "--endpoint-url", moto_endpoint, "--direction", "down", "models_v2"
    )
    assert (
        down.exit_code == 0 and "downloaded 1 file(s)" in down.output and "verified against the manifest" in down.output
    )
    assert (pulled / "models_v2/m/w.bin").read_bytes() == (root / "models_v2/m/w.bin").read_bytes()
    for result in (first, again, dry, down):
        assert SECRET not in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dest", "gs://bucket/x"], "error: --dest 'gs://bucket/x': unsupported scheme gs://"),
        (["--dest", "s3://Bad_Bucket"], "is not a valid bucket name"),
        (["--dest", "vessl://storage-only"], "expected vessl://STORAGE/VOLUME"),
        ([], "error: --dest is required"),
        (["--dest", "s3://bucket", "--direction", "sideways"], "--direction 'sideways': expected 'up' or 'down'"),
        (["--dest", "s3://bucket", "--part-size", "1"], "S3 parts must be at least 5 MiB"),
        (["--dest", "s3://bucket", "models_v2/missing"], "models_v2/missing: no such file or directory under"),
    ],
)
def test_bad_input_is_one_line_exit_2(s3_env, args, message):
    root = make_tree(s3_env / "storage", {"a.txt": 1})
    line = one_error_line(invoke("--root", str(root), *args))
    assert message in line


def test_missing_root_is_one_line(s3_env):
    assert "the sync root does not exist" in one_error_line(
        invoke("--root", str(s3_env / "nope"), "--dest", "s3://bucket")
    )


def test_missing_vessl_sdk_is_one_line(s3_env, monkeypatch):
    monkeypatch.setitem(sys.modules, "vessl", None)
    root = make_tree(s3_env / "storage", {"a.txt": 1})
    line = one_error_line(invoke("--root", str(root), "--dest", "vessl://team/models"))
    assert "VESSL volumes need the VESSL SDK, which is not installed (pip install 'weighted-mtp[vessl]')" in line


def test_store_problems_are_one_line_without_secrets(moto_endpoint, s3_env, monkeypatch):
    root = make_tree(s3_env / "storage", {"a.txt": 1})
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    missing = one_error_line(
        invoke("--root", str(root), "--dest", "s3://absent-bucket", "--endpoint-url", moto_endpoint)
    )
    assert missing == "error: s3://absent-bucket: no such bucket"

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    no_creds = one_error_line(
        invoke("--root", str(root), "--dest", "s3://some-bucket", "--endpoint-url", moto_endpoint)
    )
    assert "s3://some-bucket: no S3 credentials found" in no_creds
    assert SECRET not in missing + no_creds


def test_a_symlink_out_of_the_root_is_named_on_stderr_and_not_sent(tmp_path, monkeypatch):
    monkeypatch.setenv("WMTP_CACHE_DIR", str(tmp_path / "cache"))
    root = make_tree(tmp_path / "storage", {"datasets_v2/d.jsonl": 500})
    (tmp_path / "hostname").write_text("OUTSIDE-THE-ROOT\n")
    (root / "datasets_v2/hostname").symlink_to(tmp_path / "hostname")
    result = invoke("--root", str(root), "--dest", str(tmp_path / "backup"), "--no-progress")
    assert result.exit_code == 0, result.output
    assert result.stderr == "warning: not synced: datasets_v2/hostname (a symlink out of the sync root)\n"
    assert "uploaded 1 file(s)" in result.stdout
    assert not (tmp_path / "backup/datasets_v2/hostname").exists()
