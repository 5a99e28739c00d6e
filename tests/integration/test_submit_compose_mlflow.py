"""local-docker: the MLflow server the compose file starts accepts the trainer's requests, and its
healthcheck tells a server that refuses them from one that answers.

No Docker engine here, so the rendered service runs on this machine: the mlflow service's command
line as rendered, started with this venv's `mlflow` (the image installs the same pinned version),
changed only where a container differs from this machine: the /mlflow bind mount becomes a temporary
dir, the listening port a free one (and with it every `:5000` in the line), 0.0.0.0 becomes 127.0.0.1.
The trainer's own tracker then talks to it at the rendered MLFLOW_TRACKING_URI, with the service
name `mlflow` resolved to 127.0.0.1 the way compose's DNS resolves it: same Host header, same URIs.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
from contextlib import contextmanager, redirect_stderr
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.integration.servers import free_port, wait_http
from wmtp_cli.platform.jobs import prepare_job

CONTAINER_PORT = "5000"


@pytest.fixture(scope="module")
def compose():
    return prepare_job("smoke", "local-docker", name="wmtp-mlflow-check").document


def here(arg: str, mount: str, store: Path, port: int) -> str:
    """One argument of a container command line as it must read on this machine (see the module doc)."""
    arg = arg.replace(mount.rstrip("/") + "/", f"{store}/", 1)  # sqlite:////mlflow/mlflow.db, /mlflow/artifacts
    if arg == CONTAINER_PORT:
        return str(port)
    if arg == "0.0.0.0":
        return "127.0.0.1"
    return arg.replace(f":{CONTAINER_PORT}", f":{port}")


def server_command(compose: dict, store: Path, port: int) -> list[str]:
    """The rendered mlflow service's entrypoint + command, with this venv's mlflow."""
    service = compose["services"]["mlflow"]
    [mount] = [volume["target"] for volume in service["volumes"] if volume.get("type") == "bind"]
    [published] = service["ports"]
    assert published.rsplit(":", 1)[1] == CONTAINER_PORT  # the container port every `:5000` refers to
    [program] = service["entrypoint"]
    return [str(Path(sys.executable).parent / program)] + [here(arg, mount, store, port) for arg in service["command"]]


@contextmanager
def running(command: list[str], port: int):
    """Start `command` (an `mlflow server`), wait for it to listen, kill its process group on exit."""
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=120, proc=proc)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.fixture
def compose_dns(monkeypatch):
    """Resolve the compose service name `mlflow` to 127.0.0.1, as compose's DNS resolves it to the service."""
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        return real("127.0.0.1" if host == "mlflow" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def trainer_uri(compose: dict, port: int) -> str:
    """The trainer service's MLFLOW_TRACKING_URI, pointing at the server's port here."""
    [value] = [
        item.split("=", 1)[1]
        for item in compose["services"]["trainer"]["environment"]
        if item.startswith("MLFLOW_TRACKING_URI=")
    ]
    assert urlsplit(value).port == int(CONTAINER_PORT)
    return value.replace(f":{CONTAINER_PORT}", f":{port}")


def track_like_the_trainer(uri: str, artifact: Path) -> tuple[str, str]:
    """A stage's tracking, through the trainer's own tracker: (run id, what it printed on stderr)."""
    from wmtp.tracking import make_tracker

    stderr = io.StringIO()
    with redirect_stderr(stderr):
        tracker = make_tracker(True, uri, "weighted-mtp", "smoke/critic", {"stage": "critic"}, 1000)
        tracker.log_params({"train": {"lr": 1e-5}})
        tracker.log_metrics({"loss": 0.75}, step=1)
        tracker.log_artifact(artifact)
        tracker.close()
    return tracker.run_id, stderr.getvalue()


def healthcheck(compose: dict, port: int) -> subprocess.CompletedProcess:
    """The rendered healthcheck, run here against the server on `port` (only its port changed)."""
    test = compose["services"]["mlflow"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"]
    argv = [sys.executable] + [arg.replace(f":{CONTAINER_PORT}", f":{port}") for arg in test[2:]]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


@pytest.mark.slow
def test_rendered_mlflow_service_accepts_the_trainer_and_its_healthcheck_proves_it(compose, compose_dns, tmp_path):
    port = free_port()
    command = server_command(compose, tmp_path / "mlflow", port)
    assert "--allowed-hosts" in command  # the fix under test, as rendered
    (tmp_path / "mlflow").mkdir()
    artifact = tmp_path / "spec.yaml"
    artifact.write_text("stage: critic\n")
    with running(command, port):
        assert healthcheck(compose, port).returncode == 0
        uri = trainer_uri(compose, port)
        assert urlsplit(uri).netloc == f"mlflow:{port}"  # the Host header every request carries
        run_id, warnings = track_like_the_trainer(uri, artifact)
        assert warnings == "" and run_id

        from mlflow.tracking import MlflowClient

        run = MlflowClient(tracking_uri=uri).get_run(run_id)
        assert run.info.run_name == "smoke/critic" and run.info.status == "FINISHED"
        assert run.data.metrics == {"loss": 0.75} and run.data.params["train.lr"] == "1e-05"
        assert [f.path for f in MlflowClient(tracking_uri=uri).list_artifacts(run_id)] == ["spec.yaml"]
    # The artifact went through the server into the mounted store, as in the container.
    assert list((tmp_path / "mlflow" / "artifacts").rglob("spec.yaml"))


@pytest.mark.slow
def test_healthcheck_fails_against_a_server_that_refuses_the_trainer(compose, compose_dns, tmp_path):
    """The same command line without --allowed-hosts (MLflow's defaults, the old template): the trainer
    is refused with 403 and the healthcheck must say unhealthy (the old /health one said healthy)."""
    port = free_port()
    command = server_command(compose, tmp_path / "mlflow", port)
    at = command.index("--allowed-hosts")
    defaults = command[:at] + command[at + 2 :]
    (tmp_path / "mlflow").mkdir()
    artifact = tmp_path / "spec.yaml"
    artifact.write_text("stage: critic\n")
    with running(defaults, port):
        check = healthcheck(compose, port)
        assert check.returncode != 0 and "403" in check.stderr
        _, warnings = track_like_the_trainer(trainer_uri(compose, port), artifact)
        assert "warning: MLflow at http://mlflow:" in warnings and "403" in warnings
