"""--target skypilot: the rendered task (SkyPilot's own schema, multi-node rendezvous run by bash, secret names
only), what the SDK is sent at launch, and the job's life (status, logs, cancel, ls) through the SDK, with
one clear line for what is missing or refused.

The real `skypilot` package validates tasks (tests/template_rules.py); the SDK calls go to a recording
stand-in injected into sys.modules, as the VESSL tests do."""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import subprocess
import sys
import threading
import types

import pytest
import yaml
from typer.testing import CliRunner

from tests.template_rules import validate_skypilot_task
from wmtp.errors import WmtpError
from wmtp_cli.main import app
from wmtp_cli.platform.jobs import prepare_job

runner = CliRunner()
TRACKING = "https://mlflow.example.org"
SECRET_VALUES = {"HF_TOKEN": "hf-secret-Qw81Zx73", "MLFLOW_TRACKING_PASSWORD": "pw-secret-Lm27Nb64"}


@pytest.fixture
def clean_env(monkeypatch):
    """No secret, tracking server or SkyPilot setting of the developer's shell takes part; what a test's
    --env-file or the SDK's import sets in os.environ is removed afterwards (set, then deleted: recorded)."""
    for name in list(os.environ):
        if name.startswith(("MLFLOW_", "SKYPILOT_", "AWS_")) or name in ("HF_TOKEN",):
            monkeypatch.delenv(name)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_PASSWORD", "SKYPILOT_DISABLE_USAGE_COLLECTION"):
        monkeypatch.setenv(name, "x")
        monkeypatch.delenv(name)


# ---------------------------------------------------------------- the task


def test_dry_run_prints_the_task_skypilot_accepts(clean_env):
    result = runner.invoke(app, ["submit", "verifiable", "--target", "skypilot", "--name", "wmtp-s1", "--dry-run"])
    assert result.exit_code == 0, result.output
    task = yaml.safe_load(result.stdout)
    assert task["name"] == "wmtp-s1" and task["num_nodes"] == 1
    assert task["resources"] == {
        "accelerators": "A100-80GB:4",
        "use_spot": False,
        "image_id": "docker:ghcr.io/weighted-mtp/trainer:latest",
    }
    assert task["file_mounts"] == {"/data/storage": {"source": "s3://wmtp-storage", "mode": "MOUNT"}}
    assert task["run"] == (
        "cd /data && exec torchrun --standalone --nproc_per_node=4 -m wmtp.train verifiable "
        "--run-dir storage/checkpoints/wmtp-s1"
    )
    assert result.stderr.splitlines()[-1] == "# dry run: skypilot job wmtp-s1 not submitted"
    job = prepare_job("verifiable", "skypilot", name="wmtp-s1")
    assert result.stdout == job.manifest
    validate_skypilot_task(task, job.context)  # SkyPilot's own verdict, then our template's rules


def test_the_validator_is_skypilots_own_schema_and_stays_offline():
    """A task SkyPilot would refuse is refused, in SkyPilot's words; validating needs no network (the
    validator refuses sockets, and the resources' catalog check, which would download, is not made)."""
    job = prepare_job("smoke", "skypilot", name="wmtp-s2")
    for edit, expected in [
        (
            lambda task: task["resources"].update(accelerator="H100"),
            "Invalid resources YAML: Instead of 'accelerator', did you mean 'accelerators'?",
        ),
        (lambda task: task.update(secrets={"HF_TOKEN": None}), "Invalid task YAML: Found unsupported field 'secrets'."),
        (lambda task: task["file_mounts"]["/data/storage"].update(mode="STREAM"), "Invalid storage YAML: 'STREAM'"),
        (lambda task: task["config"]["docker"].update(image="x"), "Invalid task YAML: Found unsupported field 'image'"),
    ]:
        task = copy.deepcopy(job.document)
        edit(task)
        with pytest.raises(WmtpError) as info:
            validate_skypilot_task(task, job.context)
        assert str(info.value).startswith(f"SkyPilot task: {expected}"), str(info.value)


def test_secrets_are_names_only_whatever_the_environment_holds(clean_env, monkeypatch):
    for name, value in SECRET_VALUES.items():
        monkeypatch.setenv(name, value)
    job = prepare_job("smoke", "skypilot", name="wmtp-s3")
    envs = job.document["envs"]
    assert {name: envs[name] for name in job.context.secret_names} == dict.fromkeys(job.context.secret_names)
    assert envs["MLFLOW_TRACKING_URI"] is None  # a server's URL may hold credentials: passed by name too
    assert not [value for value in SECRET_VALUES.values() if value in job.manifest]
    with_server = prepare_job("smoke", "skypilot", [f"targets.skypilot.mlflow_uri={TRACKING}"], name="wmtp-s3")
    assert with_server.document["envs"]["MLFLOW_TRACKING_URI"] == TRACKING


FAKE_TORCHRUN = """#!{python}
import json, os, sys
print(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd(), "pythonpath": os.environ.get("PYTHONPATH")}}))
"""


def test_multi_node_run_takes_rank_and_master_from_skypilot(tmp_path):
    """The rendered `run`, executed by bash as SkyPilot runs it on the second of three nodes (its variables
    set, `torchrun` a recorder, `cd /data` redirected to a temporary dir): torchrun gets the node's rank and
    the first node's address, and the trainer's arguments exactly as given, a hostile --set included."""
    hostile = 'tracking.run_name=it\'s $(touch pwned) "quoted"; `x`'
    job = prepare_job(
        "verifiable",
        "skypilot",
        ["targets.skypilot.num_nodes=3", "targets.skypilot.workdir=.", hostile],
        name="wmtp-s4",
    )
    run = job.document["run"]
    bin_dir, data = tmp_path / "bin", tmp_path / "data"
    bin_dir.mkdir()
    data.mkdir()
    (bin_dir / "torchrun").write_text(FAKE_TORCHRUN.format(python=sys.executable))
    (bin_dir / "torchrun").chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "SKYPILOT_NUM_NODES": "3",
        "SKYPILOT_NODE_RANK": "1",
        "SKYPILOT_NODE_IPS": "10.0.0.7\n10.0.0.8\n10.0.0.9",
    }
    redirect = f"cd() {{ builtin cd {data}; }}; "  # the trainer's /data, here
    result = subprocess.run(["bash", "-c", redirect + run], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["argv"][:5] == [
        "--nnodes=3",
        "--node_rank=1",
        "--master_addr=10.0.0.7",
        "--master_port=29500",
        "--nproc_per_node=4",
    ]
    assert seen["argv"][5:] == job.context.trainer_args and hostile in seen["argv"]
    assert seen["cwd"] == str(data) and seen["pythonpath"] == f"{tmp_path}/sky_workdir"
    assert not (tmp_path / "pwned").exists() and not (data / "pwned").exists()
    assert job.document["workdir"] == os.getcwd()  # synced from here; absolute, so the task launches anywhere


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "targets.skypilot.gpus_per_node=2",
            "error: distributed.nproc_per_node 4 exceeds targets.skypilot.gpus_per_node 2 (one process per GPU)",
        ),
        (
            "targets.skypilot.accelerator=H100:8",
            "error: targets.skypilot.accelerator: expected an accelerator name like "
            "H100 or A100-80GB (the count is gpus_per_node) (got 'H100:8')",
        ),
        (
            "targets.skypilot.bucket=/mnt/storage",
            "error: targets.skypilot.bucket: expected a bucket URL like "
            "s3://wmtp-storage (s3, gs, r2, cos or oci) (got '/mnt/storage')",
        ),
        (
            "targets.skypilot.num_nodes=0",
            "error: targets.skypilot.num_nodes: Input should be greater than or equal to 1 (got 0)",
        ),
        (
            "targets.skypilot.workdir=no/such/dir",
            "error: targets.skypilot.workdir: {cwd}/no/such/dir is not a directory",
        ),
        (
            "targets.skypilot.workdir=/tmp/$HF_TOKEN",
            "error: targets.skypilot.workdir: expected a local directory path "
            "without quotes, '$' or control characters",
        ),
        (
            "targets.skypilot.mlflow_uri=https://alice:pw-Kq8@mlflow.example.org",
            "error: targets.skypilot.mlflow_uri: must not contain credentials (user:password@)",
        ),
    ],
)
def test_a_choice_that_cannot_run_is_one_line(override, message, clean_env):
    result = runner.invoke(app, ["submit", "baseline", "--target", "skypilot", "--dry-run", "--set", override])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert result.output.startswith(message.format(cwd=os.getcwd())), result.output
    assert "pw-Kq8" not in result.output


def test_tracking_uri_given_twice_is_one_line(clean_env):
    result = runner.invoke(
        app,
        [
            "submit",
            "smoke",
            "--target",
            "skypilot",
            "--dry-run",
            "--set",
            f"targets.skypilot.mlflow_uri={TRACKING}",
            "--set",
            "env.secrets=[MLFLOW_TRACKING_URI]",
        ],
    )
    assert result.exit_code == 2
    assert result.output == (
        "error: targets.skypilot.mlflow_uri and MLFLOW_TRACKING_URI in env.secrets both set "
        "MLFLOW_TRACKING_URI; keep one\n"
    )


def test_preempted_job_has_time_to_save():
    job = prepare_job("baseline", "skypilot", ["distributed.preemption_grace_s=120"], name="wmtp-grace")
    assert job.document["envs"]["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "120"
    assert " && exec torchrun " in job.document["run"]  # SIGTERM reaches torchrun, not a shell in front of it


# ---------------------------------------------------------------- the SDK (a recording stand-in)

# Behaviour read from skypilot 0.9.2:
# - every call but jobs.tail_logs returns a request id; `get(id)` returns its result or raises its error,
#   `stream_and_get(id)` prints the request's log first (here one line);
# - Task.from_yaml_config(config, env_overrides) refuses an env var left null ("Environment variable … is
#   None"), as the real one does;
# - jobs.launch(task, name) → (job_id, handle); jobs.queue(refresh, skip_finished, all_users) → records
#   {job_id, job_name, status (an enum with .value), submitted_at (epoch s), recovery_count};
#   jobs.cancel(name=…) → None; jobs.tail_logs(name, job_id, follow, controller, refresh, output_stream)
#   prints the log from its start to output_stream and returns an exit code.
# FAKE_SKY_REFUSE: the launch request fails with SkyPilot's coloured, multi-line message.
LOG = ["I 11-22 10:15:00 Job started.", "step 1: loss 7.03", "step 2: loss 6.19", "step 3: loss 5.80"]


def status_value(text: str):
    return types.SimpleNamespace(value=text)


def managed_jobs_queue() -> list[dict]:
    """The managed-job queue, ages counted from now (a module-level time would age while the suite runs)."""
    now = dt.datetime.now(dt.timezone.utc)
    return [
        {
            "job_id": 3,
            "job_name": "wmtp-old",
            "status": status_value("SUCCEEDED"),
            "submitted_at": (now - dt.timedelta(days=2)).timestamp(),
            "recovery_count": 0,
        },
        {
            "job_id": 5,
            "job_name": "wmtp-s5",
            "status": status_value("FAILED"),
            "submitted_at": (now - dt.timedelta(hours=5)).timestamp(),
            "recovery_count": 0,
        },
        {
            "job_id": 6,
            "job_name": "notebook",
            "status": status_value("RUNNING"),
            "submitted_at": (now - dt.timedelta(hours=1)).timestamp(),
            "recovery_count": 0,
        },
        {
            "job_id": 8,
            "job_name": "wmtp-s5",
            "status": status_value("RUNNING"),
            "submitted_at": (now - dt.timedelta(minutes=12)).timestamp(),
            "recovery_count": 2,
        },
    ]


def fake_sky() -> types.ModuleType:
    sky = types.ModuleType("sky")
    sky.jobs = jobs = types.ModuleType("sky.jobs")
    sky.calls, sky.usage_collection, results = [], [], {}
    sky.release_log, sky.log_done = threading.Event(), False
    sky.release_log.set()

    def request(result):
        sky.usage_collection.append(os.environ.get("SKYPILOT_DISABLE_USAGE_COLLECTION"))
        results[f"req-{len(results) + 1}"] = result
        return f"req-{len(results)}"

    class Task:
        def __init__(self, config, envs):
            self.config, self.envs = config, envs

        @staticmethod
        def from_yaml_config(config, env_overrides=None):
            sky.calls.append(("Task.from_yaml_config", copy.deepcopy(config), list(env_overrides or [])))
            envs = {**(config.get("envs") or {}), **dict(env_overrides or [])}
            for key, value in envs.items():
                if value is None:
                    raise ValueError(
                        f"Environment variable {key!r} is None. Please set a value for it in task "
                        "YAML or with --env flag."
                    )
            return Task(config, envs)

    def launch(task, name=None):
        sky.calls.append(("jobs.launch", task.config["name"], name))
        if os.environ.get("FAKE_SKY_REFUSE"):
            return request(
                RuntimeError(
                    "\x1b[31mResourcesUnavailableError: Failed to acquire resources in all "
                    "zones in us-east-1\nfor {AWS(p4de.24xlarge)}.\x1b[0m"
                )
            )
        return request((7, None))

    def queue(refresh, skip_finished=False, all_users=False):
        sky.calls.append(("jobs.queue", refresh, skip_finished, all_users))
        return request(managed_jobs_queue())

    def cancel(name=None, job_ids=None, all=False, all_users=False):  # noqa: A002 (the SDK's names)
        sky.calls.append(("jobs.cancel", name))
        return request(None)

    def tail_logs(name=None, job_id=None, follow=True, controller=False, refresh=False, output_stream=None):
        sky.calls.append(("jobs.tail_logs", name, follow))
        for index, line in enumerate(LOG):
            print(line, file=output_stream, flush=True)
            if index == 1 and follow:
                sky.release_log.wait(10)  # a running job: the rest comes later
        sky.log_done = True
        return 0

    def get(request_id):
        sky.calls.append(("get", request_id))
        result = results[request_id]
        if isinstance(result, Exception):
            raise result
        return result

    def stream_and_get(request_id=None, log_path=None, tail=None, follow=True, output_stream=None):
        sky.calls.append(("stream_and_get", request_id))
        print("⚙︎ Launching managed job 'wmtp-…' (the request's log)", file=output_stream)
        return get(request_id)

    sky.Task, sky.get, sky.stream_and_get = Task, get, stream_and_get
    jobs.launch, jobs.queue, jobs.cancel, jobs.tail_logs = launch, queue, cancel, tail_logs
    return sky


@pytest.fixture
def sky(monkeypatch, clean_env):
    module = fake_sky()
    monkeypatch.setitem(sys.modules, "sky", module)
    monkeypatch.setitem(sys.modules, "sky.jobs", module.jobs)
    monkeypatch.delenv("FAKE_SKY_REFUSE", raising=False)
    return module


def test_without_the_sdk_says_how_to_install_it(clean_env, monkeypatch):
    monkeypatch.setitem(sys.modules, "sky", None)  # what a machine without the optional extra sees
    monkeypatch.setenv("MLFLOW_TRACKING_URI", TRACKING)
    for command in (["submit", "smoke"], ["status", "wmtp-s5"], ["ls"]):
        result = runner.invoke(app, [*command, "--target", "skypilot"])
        assert result.exit_code == 2
        assert result.output == (
            "error: the SkyPilot SDK is not installed: pip install 'weighted-mtp[skypilot]' "
            "(`wmtp submit … --dry-run` and `wmtp render` give the task YAML without it)\n"
        )


def test_submit_launches_the_rendered_task_as_a_managed_job(sky, monkeypatch, tmp_path):
    """The task sent is the dry run's, the secrets' values set here filled in by name (from the environment
    and --env-file) and the names without one left out and listed; usage reports off."""
    monkeypatch.setenv("HF_TOKEN", SECRET_VALUES["HF_TOKEN"])
    env_file = tmp_path / "creds.env"
    env_file.write_text(
        f"MLFLOW_TRACKING_URI={TRACKING}\nMLFLOW_TRACKING_PASSWORD={SECRET_VALUES['MLFLOW_TRACKING_PASSWORD']}\n"
    )
    dry = runner.invoke(app, ["submit", "verifiable", "--target", "skypilot", "--name", "wmtp-s6", "--dry-run"])
    result = runner.invoke(
        app, ["submit", "verifiable", "--target", "skypilot", "--name", "wmtp-s6", "--env-file", str(env_file)]
    )
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "⚙︎ Launching managed job 'wmtp-…' (the request's log)",
        "launched SkyPilot managed job wmtp-s6 (id 7)",
        "follow it: wmtp status wmtp-s6 --target skypilot ; wmtp logs wmtp-s6 --target skypilot",
        "not set here, so not passed to the job: MLFLOW_TRACKING_USERNAME, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY",
    ]
    [(_, config, overrides)] = [call for call in sky.calls if call[0] == "Task.from_yaml_config"]
    sent = yaml.safe_load(dry.stdout)
    for name in ("MLFLOW_TRACKING_USERNAME", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        del sent["envs"][name]
    assert config == sent
    assert overrides == [
        ("MLFLOW_TRACKING_PASSWORD", SECRET_VALUES["MLFLOW_TRACKING_PASSWORD"]),
        ("HF_TOKEN", SECRET_VALUES["HF_TOKEN"]),
        ("MLFLOW_TRACKING_URI", TRACKING),
    ]
    assert [call[0] for call in sky.calls] == ["Task.from_yaml_config", "jobs.launch", "stream_and_get", "get"]
    assert sky.calls[1] == ("jobs.launch", "wmtp-s6", "wmtp-s6")
    assert sky.usage_collection == ["1"]
    assert not [value for value in SECRET_VALUES.values() if value in result.output + dry.output]


def test_submit_without_a_tracking_server_is_refused_before_the_sdk(sky):
    """The trainer's fallback store is sqlite under /data/storage, the bucket mount: refused in one line."""
    result = runner.invoke(app, ["submit", "smoke", "--target", "skypilot"])
    assert result.exit_code == 2 and sky.calls == []
    assert result.output == (
        "error: no MLflow tracking server for the SkyPilot job: set MLFLOW_TRACKING_URI here (environment or "
        "--env-file; passed to the job by name) or targets.skypilot.mlflow_uri=https://…; without one the trainer "
        "would write an sqlite store on the bucket mount, which sqlite cannot use\n"
    )
    for overrides in ([f"targets.skypilot.mlflow_uri={TRACKING}"], [f"tracking.uri={TRACKING}"]):
        sky.calls.clear()
        sent = runner.invoke(
            app,
            [
                "submit",
                "smoke",
                "--target",
                "skypilot",
                "--name",
                "wmtp-s7",
                *[arg for override in overrides for arg in ("--set", override)],
            ],
        )
        assert sent.exit_code == 0, sent.output
        assert sky.calls[1] == ("jobs.launch", "wmtp-s7", "wmtp-s7")


def test_a_refused_launch_is_one_line(sky, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", TRACKING)
    monkeypatch.setenv("FAKE_SKY_REFUSE", "1")
    result = runner.invoke(app, ["submit", "smoke", "--target", "skypilot", "--name", "wmtp-s8"])
    assert result.exit_code == 2
    assert result.stderr == (  # stdout has the request's log, as SkyPilot prints it
        "error: SkyPilot could not launch the managed job: ResourcesUnavailableError: Failed to acquire resources "
        "in all zones in us-east-1 for {AWS(p4de.24xlarge)}.\n"
    )


def test_status_is_the_newest_job_of_that_name(sky):
    result = runner.invoke(app, ["status", "wmtp-s5", "--target", "skypilot"])
    assert (result.exit_code, result.output) == (0, "SkyPilot managed job wmtp-s5 (id 8): RUNNING, recovered 2×\n")
    assert sky.calls == [("jobs.queue", False, False, False), ("get", "req-1")]
    unknown = runner.invoke(app, ["status", "wmtp-nope", "--target", "skypilot"])
    assert unknown.exit_code == 2
    assert unknown.output == (
        "error: no SkyPilot managed job named 'wmtp-nope' (`wmtp ls --target skypilot` lists them)\n"
    )


def test_logs_are_the_last_lines(sky):
    result = runner.invoke(app, ["logs", "wmtp-s5", "--target", "skypilot", "--tail", "2"])
    assert (result.exit_code, result.output.splitlines()) == (0, LOG[-2:])
    assert sky.calls == [("jobs.tail_logs", "wmtp-s5", False)]


def test_followed_logs_come_as_the_job_prints_them(sky):
    """--follow: lines are handed on while the SDK call still runs (it blocks until the job ends)."""
    from wmtp_cli.platform.lifecycle import job_logs

    sky.release_log.clear()
    lines = iter(job_logs("wmtp-s5", "skypilot", 200, follow=True))
    assert [next(lines), next(lines)] == LOG[:2]
    assert not sky.log_done  # handed on while the stand-in still waits to print the rest
    sky.release_log.set()
    assert list(lines) == LOG[2:]
    assert sky.calls == [("jobs.tail_logs", "wmtp-s5", True)]


def test_cancel_cancels_a_running_job_by_name(sky):
    result = runner.invoke(app, ["cancel", "wmtp-s5", "--target", "skypilot"])
    assert (result.exit_code, result.output) == (
        0,
        "cancelled SkyPilot managed job wmtp-s5 (SkyPilot tears its nodes down)\n",
    )
    assert [call for call in sky.calls if call[0] == "jobs.cancel"] == [("jobs.cancel", "wmtp-s5")]
    done = runner.invoke(app, ["cancel", "wmtp-old", "--target", "skypilot"])  # SUCCEEDED: nothing to cancel
    assert done.exit_code == 2
    assert done.output == (
        "error: no running SkyPilot managed job named 'wmtp-old' (`wmtp ls --target skypilot` lists them)\n"
    )
    assert len([call for call in sky.calls if call[0] == "jobs.cancel"]) == 1


def test_ls_lists_the_managed_jobs_named_like_ours(sky):
    result = runner.invoke(app, ["ls", "--target", "skypilot"])
    assert result.exit_code == 0, result.output
    assert [line.split() for line in result.output.splitlines()] == [
        ["NAME", "STATUS", "AGE"],
        ["wmtp-s5", "RUNNING", "12m"],
        ["wmtp-s5", "FAILED", "5h"],
        ["wmtp-old", "SUCCEEDED", "2d"],
    ]  # `notebook` is not ours
