"""Every experiment × target (the registry's) renders, passes its validator (the real Compose v2 binary for
compose) and keeps its template's invariants (tests/template_rules.py); no secret value reaches a
rendered manifest or the CLI's output."""

from __future__ import annotations

import subprocess

import pytest
import yaml
from typer.testing import CliRunner

from tests.template_rules import RULES
from wmtp.assets import asset_dir
from wmtp.errors import WmtpError
from wmtp_cli.main import app
from wmtp_cli.platform.jobs import prepare_job
from wmtp_cli.platform.plugins.local_docker import check_with_binary, compose_command
from wmtp_cli.platform.registry import names

EXPERIMENTS = sorted(p.stem for p in asset_dir("jobs").glob("*.yaml") if p.stem != "defaults")
TARGETS = names()
SECRET_NAMES = [
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "HF_TOKEN",
]
runner = CliRunner()


def test_every_shipped_experiment_is_covered():
    assert {"baseline", "critic", "verifiable", "rho1", "smoke"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_renders_and_validates(experiment, target):
    job = prepare_job(experiment, target, name=f"wmtp-{experiment}")
    assert job.context.name == f"wmtp-{experiment}"
    if job.document is None:  # a command line (local)
        assert job.manifest.startswith(f"wmtp train {experiment} --run-dir storage/checkpoints/wmtp-{experiment}")
        return
    document = yaml.safe_load(job.manifest)
    assert document == job.document
    command = trainer_command(document)
    assert command[command.index("wmtp.train") + 1] == experiment
    assert command[-2:] == ["--run-dir", f"storage/checkpoints/wmtp-{experiment}"]


def trainer_command(document) -> list[str]:
    """The torchrun arguments a manifest runs, wherever its template puts them: the list, or the shell
    command, holding `wmtp.train`."""
    if isinstance(document, dict):
        document = list(document.values())
    if isinstance(document, str):
        return document.split() if "wmtp.train" in document.split() else []
    if isinstance(document, list):
        if "wmtp.train" in document:
            return document
        return next(filter(None, map(trainer_command, document)), [])
    return []


# Each template's invariants, on the default settings and on the settings that change its shape (a new
# target's template gets its rules in tests/template_rules.py when it has some worth stating).
SHAPES = {
    "k8s": [[], ["targets.k8s.nodes=3", "targets.k8s.gpus_per_node=8"], ["targets.k8s.gpus_per_node=0"]],
    "local-docker": [[], ["targets.local_docker.gpus=4"]],
    "vessl": [[], ["targets.vessl.local_tracking=true"], ["targets.vessl.code_repo=null"]],
    "skypilot": [
        [],
        [
            "targets.skypilot.num_nodes=4",
            "targets.skypilot.gpus_per_node=8",
            "targets.skypilot.accelerator=H100",
            "targets.skypilot.cloud=aws",
            "targets.skypilot.region=us-east-1",
            "targets.skypilot.use_spot=true",
        ],
        [
            "targets.skypilot.mlflow_uri=https://mlflow.example.org",
            "targets.skypilot.workdir=.",
            "targets.skypilot.bucket=gs://wmtp-storage/team-a",
        ],
    ],
}


@pytest.mark.parametrize("target", [name for name in TARGETS if name in RULES])
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_rendered_manifests_keep_their_template_invariants(experiment, target):
    """What a submit no longer checks (the operator's admission rules, VESSL's keys, our compose wiring,
    SkyPilot's own task schema) holds for every manifest our templates render."""
    for overrides in SHAPES.get(target, [[]]):
        job = prepare_job(experiment, target, overrides, name="wmtp-rules")
        RULES[target](job.document, job.manifest, job.context)


@pytest.fixture
def secret_environment(monkeypatch, tmp_path):
    """Distinctive values for every secret: in the environment and in an --env-file."""
    values = {}
    for index, name in enumerate(SECRET_NAMES):
        values[name] = f"env-secret-{index}-Zq81xW"
        monkeypatch.setenv(name, values[name])
    env_file = tmp_path / "creds.env"
    file_values = {
        "HF_TOKEN": "file-secret-hf-Pp93",
        "VESSL_ACCESS_TOKEN": "file-secret-vessl-Kk27",
        "EXTRA_PASSWORD": "file-secret-extra-Mm55",
    }
    env_file.write_text("".join(f"{key}={value}\n" for key, value in file_values.items()))
    return env_file, [*values.values(), *file_values.values()]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_no_secret_value_in_manifest_or_output(experiment, target, secret_environment, tmp_path):
    env_file, secret_values = secret_environment
    out = tmp_path / "manifest.yaml"
    dry = runner.invoke(app, ["submit", experiment, "--target", target, "--dry-run", "--env-file", str(env_file)])
    rendered = runner.invoke(
        app, ["render", experiment, "--target", target, "-o", str(out), "--env-file", str(env_file)]
    )
    assert dry.exit_code == 0, dry.output
    assert rendered.exit_code == 0, rendered.output
    for text in (dry.output, rendered.output, out.read_text()):
        assert not [value for value in secret_values if value in text]
    if target != "local":  # the names are referenced instead
        assert "HF_TOKEN" in out.read_text() or "creds.env" in out.read_text()


def test_secret_pasted_into_an_override_is_refused(secret_environment):
    result = runner.invoke(
        app, ["submit", "baseline", "--target", "k8s", "--dry-run", "--set", "tracking.run_name=env-secret-4-Zq81xW"]
    )
    assert result.exit_code == 2
    # Refused as a --set, before the spec is read (so no spec error can quote it back); the manifest check
    # behind it is tested on its own (tests/unit/test_platform_secrets.py).
    assert result.output.startswith("error: --set tracking.run_name: holds the value of secret HF_TOKEN; ")
    assert "env-secret-4-Zq81xW" not in result.output


def test_compose_env_file_is_referenced_by_absolute_path(secret_environment):
    env_file, _ = secret_environment
    job = prepare_job("smoke", "local-docker", name="wmtp-envfile", env_file=env_file)
    trainer = job.document["services"]["trainer"]
    assert trainer["env_file"] == [{"path": str(env_file.resolve()), "required": True}]
    assert not any(entry.startswith("HF_TOKEN") for entry in trainer["environment"])


def test_compose_with_gpus_reserves_them_and_passes_the_real_binary():
    job = prepare_job("baseline", "local-docker", ["targets.local_docker.gpus=4"], name="wmtp-gpu")
    trainer = job.document["services"]["trainer"]
    device = trainer["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["capabilities"] == ["gpu"] and device["count"] == 4
    assert trainer["ipc"] == "host"
    assert job.document["services"]["mlflow"]["ports"] == ["127.0.0.1:5000:5000"]
    check_with_binary(job.manifest)  # raises if the binary rejects it


@pytest.mark.parametrize("target", ["k8s", "vessl", "local-docker"])
def test_preempted_container_has_time_to_save(target):
    """SIGTERM reaches torchrun; it must wait preemption_grace_s for the workers' checkpoint, and the
    platform must not SIGKILL the container before that."""
    job = prepare_job("baseline", target, ["distributed.preemption_grace_s=120"], name="wmtp-grace")
    doc = job.document
    if target == "k8s":
        pod = doc["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
        env = {v["name"]: v.get("value") for v in pod["containers"][0]["env"]}
        assert env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "120" and pod["terminationGracePeriodSeconds"] == 150
    elif target == "vessl":
        assert doc["env"]["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "120"
    else:
        trainer = doc["services"]["trainer"]
        assert "TORCH_ELASTIC_SHUTDOWN_TIMEOUT=120" in trainer["environment"]
        assert trainer["stop_grace_period"] == "150s"
        check_with_binary(job.manifest)


def test_compose_binary_exit_code_is_what_decides(tmp_path):
    """Call the binary directly: a valid rendered file exits 0, a broken one does not."""
    good = prepare_job("smoke", "local-docker", name="wmtp-bin").manifest
    broken = good.replace("ipc: host", "ipc: [host]")
    codes = []
    for label, text in (("good", good), ("broken", broken)):
        path = tmp_path / f"{label}.yaml"
        path.write_text(text)
        codes.append(
            subprocess.run([*compose_command(), "-f", str(path), "config", "--quiet"], capture_output=True).returncode
        )
    assert codes[0] == 0 and codes[1] != 0


def test_broken_compose_is_rejected_with_one_line():
    good = prepare_job("smoke", "local-docker", name="wmtp-bin").manifest
    with pytest.raises(WmtpError) as info:
        check_with_binary(good.replace("condition: service_healthy", "condition: whenever"))
    message = str(info.value)
    assert message.startswith("compose file rejected by docker-compose config:") and "\n" not in message
    assert "/tmp/" not in message


def test_multi_node_pytorchjob_has_workers():
    job = prepare_job("verifiable", "k8s", ["targets.k8s.nodes=4", "targets.k8s.gpus_per_node=8"], name="wmtp-multi")
    replicas = job.document["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 3
    limits = replicas["Worker"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"nvidia.com/gpu": 8}
    assert "targets.k8s.nodes=4" not in " ".join(replicas["Master"]["template"]["spec"]["containers"][0]["args"])


def test_compose_mlflow_that_would_refuse_the_trainer_is_rejected():
    """MLflow 3 answers 403 to a Host it does not allow: a server command without the trainer's Host
    (mlflow:5000) is refused before anything starts (the served behaviour: test_submit_compose_mlflow)."""
    from tests.template_rules import validate_compose

    job = prepare_job("smoke", "local-docker", name="wmtp-hosts")
    command = job.document["services"]["mlflow"]["command"]
    assert "mlflow:5000" in command[command.index("--allowed-hosts") + 1].split(",")
    for hosts in (None, "127.0.0.1:5000,localhost:5000"):
        doc = yaml.safe_load(job.manifest)
        at = command.index("--allowed-hosts")
        doc["services"]["mlflow"]["command"] = (
            command[:at] + ([] if hosts is None else ["--allowed-hosts", hosts]) + command[at + 2 :]
        )
        with pytest.raises(WmtpError) as info:
            validate_compose(doc, yaml.safe_dump(doc), job.context)
        assert str(info.value).startswith(
            "compose file: services.mlflow.command: --allowed-hosts must list mlflow:5000"
        )
