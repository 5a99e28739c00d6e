"""k8s submission through the real `kubernetes` client to a loopback HTTP server that records requests."""

from __future__ import annotations

import json
import threading
import time
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
        entry = {
            "method": self.command,
            "path": parts.path,
            "query": parse_qs(parts.query),
            "body": body,
            "authorization": self.headers.get("Authorization"),
        }
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
            # Like kube-apiserver: the stored object gets its creation time.
            stored = json.loads(json.dumps(entry["body"]))
            stored["metadata"]["creationTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self.server.created[stored["metadata"]["name"]] = stored
        self.reply(201, entry["body"])

    def do_DELETE(self):
        entry = self.record()
        name = entry["path"].rsplit("/", 1)[-1]
        if self.server.created.pop(name, None) is None:
            self.reply(
                404,
                {
                    "kind": "Status",
                    "status": "Failure",
                    "message": f'pytorchjobs.kubeflow.org "{name}" not found',
                    "code": 404,
                },
            )
            return
        self.reply(200, {"kind": "Status", "status": "Success", "details": {"name": name}})

    def do_GET(self):
        entry = self.record()
        name = entry["path"].rsplit("/", 1)[-1]
        if entry["path"].endswith("/log"):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"step 1: loss 7.03\nstep 2: loss 6.19\n")
            if entry["query"].get("follow") == ["true"]:  # a running container: more lines come, then it ends
                for step in (3, 4):
                    self.wfile.flush()
                    time.sleep(0.2)
                    self.wfile.write(f"step {step}: loss {8 - step}.00\n".encode())
            return
        if entry["path"].endswith("/pytorchjobs"):  # list: only the labelSelector's jobs, like the real one
            namespace = entry["path"].split("/")[-2]
            key, _, value = entry["query"].get("labelSelector", ["="])[0].partition("=")
            items = [
                self.with_status(job)
                for job in self.server.created.values()
                if job["metadata"].get("namespace") == namespace
                and (not key or (job["metadata"].get("labels") or {}).get(key) == value)
            ]
            self.reply(200, {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJobList", "items": items})
            return
        job = self.server.created.get(name)
        if job is None:
            self.reply(
                404, {"kind": "Status", "status": "Failure", "message": f'pytorchjobs "{name}" not found', "code": 404}
            )
            return
        self.reply(200, self.with_status(job))

    @staticmethod
    def with_status(job: dict) -> dict:
        status = {
            "conditions": [{"type": "Created", "status": "True"}, {"type": "Running", "status": "True"}],
            "replicaStatuses": {"Master": {"active": 1}},
        }
        return {**job, "status": status}


@pytest.fixture
def api_server(tmp_path, monkeypatch):
    server = RecordingApiServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "loop",
                "clusters": [{"name": "loop", "cluster": {"server": server.url}}],
                "users": [{"name": "tester", "user": {"token": "loopback-token"}}],
                "contexts": [{"name": "loop", "context": {"cluster": "loop", "user": "tester"}}],
            }
        )
    )
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
    result = runner.invoke(
        app,
        [
            "submit",
            "baseline",
            "--target",
            "k8s",
            "--name",
            "wmtp-k8s-2",
            "--set",
            "targets.k8s.namespace=team-a",
            "--server-dry-run",
        ],
    )
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
    assert result.output.strip() == (
        "error: Kubernetes API refused to create the PyTorchJob: 409 Conflict: "
        'pytorchjobs.kubeflow.org "wmtp-k8s-3" already exists'
    )


def test_invalid_job_never_reaches_the_server(api_server):
    result = runner.invoke(
        app, ["submit", "baseline", "--target", "k8s", "--name", "wmtp-k8s-4", "--set", "targets.k8s.gpus_per_node=1"]
    )
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
    assert result.output.strip() == (
        "error: no Kubernetes credentials: set KUBECONFIG (or ~/.kube/config), or run inside a cluster"
    )


def test_malformed_kubeconfig_is_one_line_naming_the_file(tmp_path, monkeypatch):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("users:\n- name: me\n  user: {token: s3cr3t-t0ken-value\n")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    result = runner.invoke(app, ["submit", "baseline", "--target", "k8s", "--name", "wmtp-k8s-7"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {kubeconfig}:")
    assert "not a usable kubeconfig (" in lines[0] and "s3cr3t" not in result.output


@pytest.mark.parametrize(
    "command", [["submit", "baseline", "--name", "wmtp-k8s-8"], ["status", "wmtp-k8s-8"], ["logs", "wmtp-k8s-8"]]
)
def test_without_the_kubernetes_package_says_how_to_install_it(command, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "kubernetes", None)  # what a machine without the optional extra sees
    result = runner.invoke(app, [*command, "--target", "k8s"])
    assert result.exit_code == 2, result.output
    assert result.output == (
        "error: the Kubernetes client is not installed: pip install 'weighted-mtp[k8s]' "
        "(`wmtp submit … --dry-run` and `wmtp render` give the PyTorchJob without it)\n"
    )
    dry = runner.invoke(app, ["submit", "baseline", "--target", "k8s", "--dry-run"])
    assert dry.exit_code == 0 and "kind: PyTorchJob" in dry.stdout


def closed_port() -> int:
    """A loopback port nothing listens on: bound once to get a free number, then released."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kubeconfig_for_a_closed_port(tmp_path, monkeypatch) -> str:
    """KUBECONFIG pointing at a loopback port nothing listens on; returns the server URL."""
    server = f"http://127.0.0.1:{closed_port()}"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "closed",
                "clusters": [{"name": "closed", "cluster": {"server": server}}],
                "users": [{"name": "tester", "user": {"token": "closed-port-token-value"}}],
                "contexts": [{"name": "closed", "context": {"cluster": "closed", "user": "tester"}}],
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    return server


@pytest.mark.parametrize(
    "command", [["submit", "baseline", "--name", "wmtp-k8s-9"], ["status", "wmtp-k8s-9"], ["logs", "wmtp-k8s-9"]]
)
def test_unreachable_api_server_is_one_line_naming_server_and_cause(command, tmp_path, monkeypatch):
    """The real client against a closed loopback port: the line names the server URL and the OS's reason."""
    server = kubeconfig_for_a_closed_port(tmp_path, monkeypatch)
    result = runner.invoke(app, [*command, "--target", "k8s"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error: cannot reach the Kubernetes API server at {server} to ")
    assert lines[0].endswith(": connection refused (MaxRetryError)")
    assert "closed-port-token-value" not in result.output


# ---------------------------------------------------------------- the job's life: ls, logs --follow, cancel


def test_ls_lists_the_pytorchjobs_wmtp_submitted_by_label(api_server):
    for name in ("wmtp-k8s-10", "wmtp-k8s-11"):
        assert runner.invoke(app, ["submit", "smoke", "--target", "k8s", "--name", name]).exit_code == 0
    foreign = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": "theirs", "namespace": "wmtp", "labels": {}},
    }
    api_server.created["theirs"] = foreign  # someone else's job in the same namespace
    result = runner.invoke(app, ["ls", "--target", "k8s"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "AGE"]
    assert sorted(line.split()[:2] for line in lines[1:]) == [["wmtp-k8s-10", "Running"], ["wmtp-k8s-11", "Running"]]
    assert all(line.split()[2].endswith("s") for line in lines[1:])  # created seconds ago
    request = api_server.requests[-1]
    assert request["method"] == "GET" and request["path"] == "/apis/kubeflow.org/v1/namespaces/wmtp/pytorchjobs"
    assert request["query"]["labelSelector"] == ["app.kubernetes.io/name=wmtp"]
    other = runner.invoke(app, ["ls", "--target", "k8s", "--set", "targets.k8s.namespace=team-b"])
    assert other.output == "no jobs submitted by wmtp found (--target k8s)\n"
    assert api_server.requests[-1]["path"] == "/apis/kubeflow.org/v1/namespaces/team-b/pytorchjobs"


def test_cancel_deletes_the_pytorchjob_and_its_pods(api_server):
    assert runner.invoke(app, ["submit", "smoke", "--target", "k8s", "--name", "wmtp-k8s-12"]).exit_code == 0
    result = runner.invoke(app, ["cancel", "wmtp-k8s-12", "--target", "k8s"])
    assert result.exit_code == 0, result.output
    assert result.output == "deleted PyTorchJob wmtp-k8s-12 in namespace wmtp (its pods go with it)\n"
    request = api_server.requests[-1]
    assert request["method"] == "DELETE"
    assert request["path"] == "/apis/kubeflow.org/v1/namespaces/wmtp/pytorchjobs/wmtp-k8s-12"
    assert request["query"] == {"propagationPolicy": ["Background"]}  # the pods are the job's dependents
    assert api_server.created == {}
    again = runner.invoke(app, ["cancel", "wmtp-k8s-12", "--target", "k8s"])
    assert again.exit_code == 2 and again.output == (
        "error: Kubernetes API refused to delete the PyTorchJob: 404 Not Found: "
        'pytorchjobs.kubeflow.org "wmtp-k8s-12" not found\n'
    )


def test_logs_follow_streams_the_master_log_until_it_ends(api_server):
    result = runner.invoke(app, ["logs", "wmtp-k8s-13", "--target", "k8s", "--follow", "--tail", "20"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "step 1: loss 7.03",
        "step 2: loss 6.19",
        "step 3: loss 5.00",
        "step 4: loss 4.00",
    ]
    request = api_server.requests[-1]
    assert request["path"] == "/api/v1/namespaces/wmtp/pods/wmtp-k8s-13-master-0/log"
    assert request["query"] == {"container": ["pytorch"], "tailLines": ["20"], "follow": ["true"]}


@pytest.mark.parametrize("command", [["ls"], ["cancel", "wmtp-k8s-14"], ["logs", "wmtp-k8s-14", "--follow"]])
def test_lifecycle_against_an_unreachable_api_server_is_one_line(command, tmp_path, monkeypatch):
    server = kubeconfig_for_a_closed_port(tmp_path, monkeypatch)
    result = runner.invoke(app, [*command, "--target", "k8s"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot reach the Kubernetes API server at {server} to ")


def kubelet_expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' expansion of a container arg (k8s.io/kubernetes third_party/forked/golang/expansion):
    `$$` → `$`, `$(NAME)` → the env value when NAME is defined, anything else left as written."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("$(", i) and ")" in text[i:]:
            name = text[i + 2 : text.index(")", i)]
            out.append(env.get(name, f"$({name})"))
            i += len(name) + 3
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def test_a_dollar_in_an_override_reaches_the_trainer_literally():
    """`$(MLFLOW_TRACKING_PASSWORD)` in a --set would be expanded by the kubelet from the pod's env (which
    holds the MLflow Secret): the manifest doubles every `$` so the trainer gets the text as typed."""
    value = "$(MLFLOW_TRACKING_PASSWORD)-$$-$HOME"
    job = rendered("smoke", "wmtp-dollar", "--set", f"tracking.run_name={value}")
    (master,) = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
    pod_env = {"MLFLOW_TRACKING_PASSWORD": "pw-from-the-secret", "HOME": "/root"}
    args = [kubelet_expand(arg, pod_env) for arg in master["args"]]
    assert f"tracking.run_name={value}" in args
    assert not any("pw-from-the-secret" in arg for arg in args)
