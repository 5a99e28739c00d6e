"""k8s submission through the real `kubernetes` client to a loopback HTTP server that records requests."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from typer.testing import CliRunner

from wmtp_cli.main import app

runner = CliRunner()


class RecordingApiServer(ThreadingHTTPServer):
    """A stand-in API server on 127.0.0.1: records every request, answers like kube-apiserver would."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), RecordingHandler)
        self.requests: list[dict] = []
        self.created: dict[str, dict] = {}
        self.reject_with: tuple[int, str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class RecordingHandler(BaseHTTPRequestHandler):
    server: RecordingApiServer

    def log_message(self, *args):  # keep pytest output clean
        pass

    def record(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        parts = urlsplit(self.path)
        entry = {"method": self.command, "path": parts.path, "query": parse_qs(parts.query), "body": body,
                 "authorization": self.headers.get("Authorization")}
        self.server.requests.append(entry)
        return entry

    def reply(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        entry = self.record()
        if self.server.reject_with:
            code, message = self.server.reject_with
            self.reply(code, {"kind": "Status", "status": "Failure", "message": message, "code": code})
            return
        if "dryRun" not in entry["query"]:
            self.server.created[entry["body"]["metadata"]["name"]] = entry["body"]
        self.reply(201, entry["body"])

    def do_GET(self):
        entry = self.record()
        name = entry["path"].rsplit("/", 1)[-1]
        if entry["path"].endswith("/log"):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"step 1: loss 7.03\nstep 2: loss 6.19\n")
            return
        job = self.server.created.get(name)
        if job is None:
            self.reply(404, {"kind": "Status", "status": "Failure", "message": f'pytorchjobs "{name}" not found',
                             "code": 404})
            return
        status = {"conditions": [{"type": "Created", "status": "True"}, {"type": "Running", "status": "True"}],
                  "replicaStatuses": {"Master": {"active": 1}}}
        self.reply(200, {**job, "status": status})


@pytest.fixture
def api_server(tmp_path, monkeypatch):
    server = RecordingApiServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "loop",
        "clusters": [{"name": "loop", "cluster": {"server": server.url}}],
        "users": [{"name": "tester", "user": {"token": "loopback-token"}}],
        "contexts": [{"name": "loop", "context": {"cluster": "loop", "user": "tester"}}],
    }))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    yield server
    server.shutdown()
    server.server_close()


def rendered(experiment: str, name: str, *extra: str) -> dict:
    """What `--dry-run` prints for the same command: the manifest the server must receive."""
    result = runner.invoke(app, ["submit", experiment, "--target", "k8s", "--name", name, "--dry-run", *extra])
    assert result.exit_code == 0, result.output
    return yaml.safe_load(result.stdout)


def test_submit_posts_the_rendered_pytorchjob(api_server):
    result = runner.invoke(app, ["submit", "verifiable", "--target", "k8s", "--name", "wmtp-k8s-1"])
    assert result.exit_code == 0, result.output
    assert "created PyTorchJob wmtp-k8s-1 in namespace wmtp" in result.output
    [request] = api_server.requests
    assert request["method"] == "POST"
    assert request["path"] == "/apis/kubeflow.org/v1/namespaces/wmtp/pytorchjobs"
    assert "dryRun" not in request["query"]
    assert request["authorization"] == "Bearer loopback-token"
    assert request["body"] == rendered("verifiable", "wmtp-k8s-1")


def test_server_dry_run_sends_dry_run_all_and_creates_nothing(api_server):
    result = runner.invoke(app, ["submit", "baseline", "--target", "k8s", "--name", "wmtp-k8s-2",
                                 "--set", "targets.k8s.namespace=team-a", "--server-dry-run"])
    assert result.exit_code == 0, result.output
    assert "server dry run accepted PyTorchJob wmtp-k8s-2 in namespace team-a (nothing created)" in result.output
    [request] = api_server.requests
    assert request["path"] == "/apis/kubeflow.org/v1/namespaces/team-a/pytorchjobs"
    assert request["query"]["dryRun"] == ["All"]
    assert request["body"] == rendered("baseline", "wmtp-k8s-2", "--set", "targets.k8s.namespace=team-a")
    assert api_server.created == {}


def test_api_rejection_is_one_line(api_server):
    api_server.reject_with = (409, 'pytorchjobs.kubeflow.org "wmtp-k8s-3" already exists')
    result = runner.invoke(app, ["submit", "baseline", "--target", "k8s", "--name", "wmtp-k8s-3"])
    assert result.exit_code == 2
    assert result.output.strip() == ('error: Kubernetes API refused to create the PyTorchJob: 409 Conflict: '
                                     'pytorchjobs.kubeflow.org "wmtp-k8s-3" already exists')


def test_invalid_job_never_reaches_the_server(api_server):
    result = runner.invoke(app, ["submit", "baseline", "--target", "k8s", "--name", "wmtp-k8s-4",
                                 "--set", "targets.k8s.gpus_per_node=1"])
    assert result.exit_code == 2 and "exceeds targets.k8s.gpus_per_node 1" in result.output
    assert api_server.requests == []


def test_status_and_logs_of_a_submitted_job(api_server):
    assert runner.invoke(app, ["submit", "smoke", "--target", "k8s", "--name", "wmtp-k8s-5"]).exit_code == 0
    status = runner.invoke(app, ["status", "wmtp-k8s-5", "--target", "k8s"])
    assert status.exit_code == 0, status.output
    assert status.output.startswith("PyTorchJob wmtp-k8s-5 in wmtp: Running")
    logs = runner.invoke(app, ["logs", "wmtp-k8s-5", "--target", "k8s", "--tail", "50"])
    assert logs.exit_code == 0 and logs.output == "step 1: loss 7.03\nstep 2: loss 6.19\n"
    log_request = api_server.requests[-1]
    assert log_request["path"] == "/api/v1/namespaces/wmtp/pods/wmtp-k8s-5-master-0/log"
    assert log_request["query"] == {"container": ["pytorch"], "tailLines": ["50"]}
    missing = runner.invoke(app, ["status", "wmtp-nope", "--target", "k8s"])
    assert missing.exit_code == 2 and "404 Not Found" in missing.output


def test_no_credentials_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    result = runner.invoke(app, ["submit", "baseline", "--target", "k8s", "--name", "wmtp-k8s-6"])
    assert result.exit_code == 2
    assert result.output.strip() == ("error: no Kubernetes credentials: set KUBECONFIG (or ~/.kube/config), "
                                     "or run inside a cluster")


def test_malformed_kubeconfig_is_one_line_naming_the_file(tmp_path, monkeypatch):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("users:\n- name: me\n  user: {token: s3cr3t-t0ken-value\n")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    result = runner.invoke(app, ["submit", "baseline", "--target", "k8s", "--name", "wmtp-k8s-7"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {kubeconfig}:")
    assert "not a usable kubeconfig (" in lines[0] and "s3cr3t" not in result.output


@pytest.mark.parametrize("command", [["submit", "baseline", "--name", "wmtp-k8s-8"], ["status", "wmtp-k8s-8"],
                                     ["logs", "wmtp-k8s-8"]])
def test_without_the_kubernetes_package_says_how_to_install_it(command, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "kubernetes", None)  # what a machine without the optional extra sees
    result = runner.invoke(app, [*command, "--target", "k8s"])
    assert result.exit_code == 2, result.output
    assert result.output == ("error: the Kubernetes client is not installed: pip install 'weighted-mtp[k8s]' "
                             "(or use --dry-run / wmtp render to get the PyTorchJob without it)\n")
    dry = runner.invoke(app, ["submit", "baseline", "--target", "k8s", "--dry-run"])
    assert dry.exit_code == 0 and "kind: PyTorchJob" in dry.stdout


def closed_port() -> int:
    """A loopback port nothing listens on: bound once to get a free number, then released."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("command", [["submit", "baseline", "--name", "wmtp-k8s-9"], ["status", "wmtp-k8s-9"],
                                     ["logs", "wmtp-k8s-9"]])
def test_unreachable_api_server_is_one_line_naming_server_and_cause(command, tmp_path, monkeypatch):
    """The real client against a closed loopback port: the line names the server URL and the OS's reason."""
    server = f"http://127.0.0.1:{closed_port()}"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "closed",
        "clusters": [{"name": "closed", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {"token": "closed-port-token-value"}}],
        "contexts": [{"name": "closed", "context": {"cluster": "closed", "user": "tester"}}],
    }))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    result = runner.invoke(app, [*command, "--target", "k8s"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error: cannot reach the Kubernetes API server at {server} to ")
    assert lines[0].endswith(": connection refused (MaxRetryError)")
    assert "closed-port-token-value" not in result.output
