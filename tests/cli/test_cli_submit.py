"""`wmtp submit / render / status / logs / image` through CliRunner: exit codes and what they print."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from wmtp_cli.main import app
from wmtp_cli.platform.registry import names

runner = CliRunner()


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.mark.parametrize(
    "target, first_line",
    [
        ("vessl", 'name: "wmtp-cli-1"'),
        ("k8s", "apiVersion: kubeflow.org/v1"),
        ("local-docker", 'name: "wmtp-cli-1"'),
        ("local", "wmtp train baseline --run-dir storage/checkpoints/wmtp-cli-1"),
    ],
)
def test_dry_run_prints_only_the_manifest_on_stdout(target, first_line):
    # VESSL without a tracking server adds a warning on stderr (see test_submit_targets); give it one.
    tracked = ["--set", "targets.vessl.mlflow_uri=https://mlflow.example.org"] if target == "vessl" else []
    result = runner.invoke(
        app, ["submit", "baseline", "--target", target, "--name", "wmtp-cli-1", "--dry-run", *tracked]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == first_line
    assert result.stderr == f"# dry run: {target} job wmtp-cli-1 not submitted\n"


def test_render_writes_the_same_manifest_as_dry_run(tmp_path):
    out = tmp_path / "jobs" / "critic.yaml"
    result = runner.invoke(app, ["render", "critic", "--target", "k8s", "-o", str(out), "--name", "wmtp-cli-2"])
    assert result.exit_code == 0, result.output
    assert result.output == f"wrote {out} (k8s job wmtp-cli-2)\n"
    dry = runner.invoke(app, ["submit", "critic", "--target", "k8s", "--name", "wmtp-cli-2", "--dry-run"])
    assert out.read_text() == dry.stdout
    assert [p.name for p in out.parent.iterdir()] == ["critic.yaml"]  # no temp file left behind


def test_default_name_is_generated_and_valid():
    result = runner.invoke(app, ["submit", "smoke", "--target", "k8s", "--dry-run"])
    name = yaml.safe_load(result.stdout)["metadata"]["name"]
    assert name.startswith("wmtp-smoke-") and len(name) <= 63


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--name", 'bad"name: x'], "error: --name 'bad\"name: x': must be a DNS-1035 label"),
        (["--target", "slurm"], f"error: --target 'slurm': expected one of {', '.join(names())}"),
        (["--set", "targets.k8s.gpus_per_node=-2"], "error: targets.k8s.gpus_per_node: Input should be greater than"),
        (["--set", "targets.k8s.image=a b"], "error: targets.k8s.image: expected a container image reference"),
        (["--set", "targets.k8s.pvc=Storage!"], "error: targets.k8s.pvc: expected a DNS-1123 subdomain"),
        (["--set", "targets.k8s.extra=1"], "error: targets.k8s.extra: unknown key"),
        (["--set", "train.bogus=1"], "train.bogus: unknown key"),
        (["--set", "env.secrets=[not-a-name]"], "error: env.secrets: 'not-a-name' is not an environment variable name"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, expected):
    base = ["submit", "baseline", "--dry-run"] + ([] if "--target" in args else ["--target", "k8s"])
    line = one_error_line(runner.invoke(app, base + args))
    assert line.startswith("error: ") and expected.removeprefix("error: ") in line


def test_bad_vessl_and_compose_values_name_their_keys():
    vessl = runner.invoke(
        app, ["submit", "smoke", "--target", "vessl", "--dry-run", "--set", "targets.vessl.storage_volume=volume://x"]
    )
    assert one_error_line(vessl).startswith("error: targets.vessl.storage_volume: expected STORAGE/VOLUME")
    docker = runner.invoke(
        app,
        ["submit", "smoke", "--target", "local-docker", "--dry-run", "--set", "targets.local_docker.mlflow_port=70000"],
    )
    assert one_error_line(docker).startswith("error: targets.local_docker.mlflow_port: Input should be less than")


def test_a_local_yaml_file_cannot_go_to_a_container(tmp_path):
    spec = tmp_path / "mine.yaml"
    spec.write_text("stages: [baseline]\n")
    line = one_error_line(runner.invoke(app, ["submit", str(spec), "--target", "vessl", "--dry-run"]))
    assert "only has the shipped jobs/; pass an experiment name" in line


def test_unknown_experiment_lists_the_available_ones():
    line = one_error_line(runner.invoke(app, ["submit", "nope", "--target", "k8s", "--dry-run"]))
    assert "experiment 'nope': no jobs/nope.yaml; available:" in line


def test_render_failure_leaves_no_file(tmp_path):
    out = tmp_path / "x.yaml"
    result = runner.invoke(app, ["render", "smoke", "--target", "k8s", "-o", str(out), "--name", "Bad"])
    one_error_line(result)
    assert not out.exists()


@pytest.mark.parametrize("command", [["image", "build"], ["image", "push", "--tag", "ghcr.io/x/y:1"]])
def test_image_commands_without_an_engine_are_one_line(command, tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM scratch\n")
    extra = ["--file", str(dockerfile), "--context", str(tmp_path)] if command[1] == "build" else []
    line = one_error_line(runner.invoke(app, command + extra))
    assert line.startswith(f"error: no Docker engine reachable at unix://{tmp_path}/none.sock")
    assert line.endswith("; start Docker") and "--dry-run" not in line  # `wmtp image` has no --dry-run


def test_image_build_needs_a_dockerfile(tmp_path):
    line = one_error_line(runner.invoke(app, ["image", "build", "--file", str(tmp_path / "Dockerfile")]))
    assert line == f"error: {tmp_path / 'Dockerfile'}: Dockerfile not found"


@pytest.mark.parametrize(
    "override, key",
    [
        ("targets.vessl.mlflow_uri=https://alice:hunter2-pass@mlflow.example.com", "targets.vessl.mlflow_uri"),
        ("train.tracking_uri=https://alice:hunter2-pass@mlflow.example.com", "--set train.tracking_uri"),
    ],
)
def test_credentials_in_a_url_never_reach_the_manifest(override, key):
    result = runner.invoke(app, ["submit", "smoke", "--target", "vessl", "--dry-run", "--set", override])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {key}: ") and "credentials (user:password@)" in result.output
    assert "hunter2" not in result.output and len(result.output.strip().splitlines()) == 1


# ---------------------------------------------------------------- secrets, hardened

TARGETS = names()  # every registered target
# Credentials whose manifest text differs from their value (JSON escapes `"`, `\`, non-ASCII; the shell
# quoting of VESSL's command and of the local command line splits `'`; compose writes `$` as `$$`).
QUOTED_SECRETS = ['tok"9f3kQ2xZ', "tok\\9f3kQ2xZ", "tok'9f3kQ2xZ", "tok-é9f3kQ2xZ", "tok$9f3kQ2xZ"]
REFUSED = "; secrets are referenced by name (env.secrets), never written — remove it from --set"


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("secret", QUOTED_SECRETS, ids=["dquote", "backslash", "squote", "non-ascii", "dollar"])
def test_a_secret_in_set_is_refused_however_the_manifest_quotes_it(target, secret, clean_env, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", secret)
    result = runner.invoke(
        app,
        [
            "submit",
            "smoke",
            "--target",
            target,
            "--dry-run",
            "--name",
            "wmtp-sec",
            "--set",
            f"tracking.run_name=run-{secret}",
        ],
    )
    assert one_error_line(result) == f"error: --set tracking.run_name: holds the value of secret HF_TOKEN{REFUSED}"
    assert secret not in result.output


@pytest.mark.parametrize("name", ["VESSL_ACCESS_TOKEN", "AWS_SESSION_TOKEN", "GITHUB_TOKEN", "OPENAI_API_KEY"])
def test_an_exported_credential_not_in_env_secrets_is_refused_too(name, clean_env, monkeypatch):
    monkeypatch.setenv(name, "exported-9c8b7a6d5e")
    result = runner.invoke(
        app, ["submit", "smoke", "--target", "k8s", "--dry-run", "--set", "tracking.run_name=mine-exported-9c8b7a6d5e"]
    )
    assert one_error_line(result) == f"error: --set tracking.run_name: holds the value of secret {name}{REFUSED}"
    assert "exported-9c8b7a6d5e" not in result.output


@pytest.mark.parametrize(
    "target, override, found",
    [
        ("k8s", "tracking.run_name=see https://alice:hunter2pass@mlflow.example.org/x", "user:password@"),
        ("local", "tracking.run_name=[a, https://hunter2pass@github.com/org/repo]", "user@ or token@"),
        ("local-docker", "tracking.run_name=copy of s3://AKIA:hunter2pass@bucket/train.jsonl", "user:password@"),
        (
            "vessl",
            "targets.vessl.mlflow_uri=https://mlflow.example.org/?next=https://alice:hunter2pass@evil.example.org",
            "user:password@",
        ),
    ],
)
def test_url_credentials_inside_a_longer_value_are_refused(target, override, found, clean_env):
    result = runner.invoke(app, ["submit", "smoke", "--target", target, "--dry-run", "--set", override])
    line = one_error_line(result)
    assert f"credentials ({found})" in line and "hunter2pass" not in result.output


SECRET = "Tok_8c1f2e9aXq"  # not a DNS label (uppercase, `_`), not a number


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--set", f"train.lr={SECRET}"], f"error: --set train.lr: holds the value of secret HF_TOKEN{REFUSED}"),
        (["--set", f"{SECRET}=1"], f"error: --set ***: holds the value of secret HF_TOKEN{REFUSED}"),
        (["--set", f"train.{SECRET}=1"], f"error: --set train.***: holds the value of secret HF_TOKEN{REFUSED}"),
        (["--name", SECRET], "error: --name '***': must be a DNS-1035 label"),
        (["--preset", SECRET], "error: preset '***': no "),
    ],
)
def test_errors_never_echo_a_secret(args, expected, clean_env, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    result = runner.invoke(app, ["submit", "smoke", "--target", "k8s", "--dry-run", *args])
    assert one_error_line(result).startswith(expected) and SECRET not in result.output


@pytest.mark.parametrize("secret", QUOTED_SECRETS, ids=["dquote", "backslash", "squote", "non-ascii", "dollar"])
def test_a_name_error_never_echoes_an_env_file_value(secret, clean_env, tmp_path):
    env_file = tmp_path / "creds.env"
    env_file.write_text(f"SOME_SETTING={secret}\n")  # read (not exported) by submit; any name counts
    result = runner.invoke(
        app, ["submit", "smoke", "--target", "k8s", "--dry-run", "--env-file", str(env_file), "--name", f"Job-{secret}"]
    )
    line = one_error_line(result)
    assert line.startswith(("error: --name 'Job-***': must be a DNS-1035", 'error: --name "Job-***": must be')), line
    assert secret not in result.output and repr(secret)[1:-1] not in result.output


def test_a_name_error_never_echoes_a_kubeconfig_token(clean_env, monkeypatch, tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({"users": [{"name": "ci", "user": {"token": "Kube_Tok_5e6f7a8b"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    result = runner.invoke(app, ["submit", "smoke", "--target", "k8s", "--dry-run", "--name", "Kube_Tok_5e6f7a8b"])
    assert one_error_line(result).startswith("error: --name '***': must be a DNS-1035 label")
