"""docker/Dockerfile and .dockerignore agree with what the job templates run inside the image;
`wmtp image build` builds that Dockerfile from the checkout (no engine here: a recording fake client)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from wmtp_cli import image
from wmtp_cli.main import app
from wmtp_cli.platform.context import CONTAINER_WORKDIR
from wmtp_cli.platform.jobs import prepare_job

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"
runner = CliRunner()


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, backslash continuations joined (Docker's rules)."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", "", "\n".join(lines))
    pairs = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


def last(dockerfile, keyword: str) -> str:
    return [args for key, args in dockerfile if key == keyword][-1]


def test_base_is_the_python_the_constraints_are_tested_with(dockerfile):
    """No pytorch/pytorch base (its torch is not the pinned one): plain CPython, the minor version CI runs."""
    base = next(args for key, args in dockerfile if key == "ARG" and args.startswith("BASE_IMAGE=")).split("=", 1)[1]
    match = re.fullmatch(r"python:(3\.\d+)-slim-[a-z]+", base)
    assert match, base
    ci = yaml.safe_load((REPO_ROOT / ".github" / "workflows" / "test.yml").read_text())
    versions = {
        str(step["with"]["python-version"])
        for job in ci["jobs"].values()
        for step in job["steps"]
        if "setup-python" in step.get("uses", "")
    }
    assert versions == {match.group(1)}
    assert last(dockerfile, "FROM") == "${BASE_IMAGE}"


def test_runs_as_a_non_root_user_created_in_the_image(dockerfile):
    user = last(dockerfile, "USER")
    assert user not in ("root", "0") and not user.startswith(("root:", "0:"))
    assert any(key == "RUN" and re.search(rf"useradd [^&]*\b{user}\b", args) for key, args in dockerfile)
    assert [key for key, _ in dockerfile].index("USER") > max(
        i for i, (key, args) in enumerate(dockerfile) if key == "RUN" and "pip install" in args
    )


def test_entry_point_is_torchrun_in_the_templates_workdir(dockerfile):
    assert json.loads(last(dockerfile, "ENTRYPOINT")) == ["torchrun"]
    cmd = json.loads(last(dockerfile, "CMD"))
    assert cmd[cmd.index("-m") + 1] == "wmtp.train"
    assert last(dockerfile, "WORKDIR") == CONTAINER_WORKDIR == "/data"
    created = " ".join(args for key, args in dockerfile if key == "RUN")
    assert "/data/storage" in created and "/code" in created


@pytest.mark.parametrize("target", ["vessl", "k8s", "local-docker"])
def test_every_container_target_runs_torchrun_in_data(target):
    document = prepare_job("smoke", target, name="wmtp-image").document
    if target == "vessl":
        step = document["run"][0]
        assert step["workdir"] == "/data" and step["command"].startswith("torchrun ")
        assert "/data/storage/" in document["import"]
    elif target == "k8s":
        container = document["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
        assert container["command"] == ["torchrun"] and container["workingDir"] == "/data"
        gid = re.search(r"^ARG GID=(\d+)$", DOCKERFILE.read_text(), re.M).group(1)
        pod = document["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
        assert pod["securityContext"]["fsGroup"] == int(gid)  # the image's user can write to the PVC
    else:
        trainer = document["services"]["trainer"]
        assert trainer["entrypoint"] == ["torchrun"] and trainer["working_dir"] == "/data"
        assert document["services"]["mlflow"]["entrypoint"] == ["mlflow"]  # same image: mlflow is a dependency


def test_project_is_installed_not_editable_and_without_its_own_dependencies(dockerfile):
    runs = [args for key, args in dockerfile if key == "RUN"]
    installs = [args for args in runs if "pip install" in args]
    assert installs and not any(re.search(r"pip install[^&]*(-e|--editable)\b", args) for args in installs)
    # Two installs: the dependencies (under the constraints, below) and the project with --no-deps.
    assert len(installs) == 2 and "pip install --no-deps /tmp/wmtp-src" in installs[1]


def pinned(path: Path) -> dict[str, str]:
    """{name: version} of a constraints file's `name==version` lines."""
    return dict(line.strip().split("==", 1) for line in path.read_text().splitlines() if "==" in line)


def arg_default(name: str) -> str:
    return re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE.read_text(), re.M).group(1)


@pytest.fixture
def dependency_layer(tmp_path) -> tuple[Path, list[list[str]]]:
    """Run the dependency RUN step here with its build args' defaults, pip replaced by a recorder:
    (the folder with its generated files, the argv of every pip install it made)."""
    step = next(
        args for key, args in instructions(DOCKERFILE.read_text()) if key == "RUN" and "constraints-image.txt" in args
    )
    for name in ("pyproject.toml", "constraints.txt"):
        (tmp_path / name).write_text((REPO_ROOT / name).read_text())
    log = tmp_path / "pip-argv.jsonl"
    recorder = tmp_path / "pip-recorder"
    recorder.write_text(
        f"#!{sys.executable}\nimport json, sys\nopen({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    recorder.chmod(0o755)
    script = step.replace("cd /tmp/wmtp-deps", f"cd {tmp_path}").replace("python -m pip install", str(recorder))
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "EXTRAS": arg_default("EXTRAS"),
        "TORCH_CUDA": arg_default("TORCH_CUDA"),
    }
    subprocess.run(["bash", "-c", script], check=True, env=env, cwd=tmp_path)
    return tmp_path, [json.loads(line) for line in log.read_text().splitlines()]


def test_image_torch_is_the_pinned_version_as_a_cuda_build(dependency_layer):
    """constraints.txt pins torch (the CPU build); the image gets that version's CUDA build, nothing else."""
    folder, _ = dependency_layer
    pin = pinned(REPO_ROOT / "constraints.txt")["torch"]
    cuda = arg_default("TORCH_CUDA")
    assert re.fullmatch(r"cu1\d\d", cuda), cuda
    assert pinned(folder / "constraints-image.txt")["torch"] == f"{pin.split('+')[0]}+{cuda}"


def test_every_package_the_image_installs_comes_through_the_constraints(dependency_layer):
    folder, installs = dependency_layer
    cuda = arg_default("TORCH_CUDA")
    assert installs == [
        [
            "--extra-index-url",
            f"https://download.pytorch.org/whl/{cuda}",
            "-r",
            "requirements.txt",
            "-c",
            "constraints-image.txt",
        ]
    ]
    requirements = (folder / "requirements.txt").read_text().split()
    assert "torch>=2.4" in requirements and "boto3>=1.34" in requirements and "transformers>=4.40" in requirements
    image, pins = pinned(folder / "constraints-image.txt"), pinned(REPO_ROOT / "constraints.txt")
    assert set(image) == set(pins)
    assert {name: version for name, version in image.items() if version != pins[name]} == {"torch": image["torch"]}


def test_the_image_build_fails_unless_it_runs_the_pinned_cuda_torch(dependency_layer):
    """The build's own check, run here: this machine's torch is the pinned version's CPU build, so the
    check must fail against both the image's pins and constraints.txt's (no CUDA)."""
    folder, _ = dependency_layer
    step = next(
        args for key, args in instructions(DOCKERFILE.read_text()) if key == "RUN" and "import sys, torch" in args
    )
    check = re.search(r'(python -c "import sys, torch;.*?")\s+(\S+constraints-image\.txt)', step)
    assert check, step
    for constraints in (folder / "constraints-image.txt", REPO_ROOT / "constraints.txt"):
        command = check.group(1).replace("python", sys.executable, 1) + f" {constraints}"
        result = subprocess.run(["bash", "-c", command], capture_output=True, text=True)
        assert result.returncode != 0 and "AssertionError" in result.stderr, (constraints, result.stderr)
        assert version("torch") in result.stderr  # names the torch it found


def test_dockerignore_keeps_environments_data_and_credentials_out():
    entries = (REPO_ROOT / ".dockerignore").read_text().split()
    for pattern in (".venv", "storage/*", ".git", "**/__pycache__", ".env", "**/*.env", "runs"):
        assert pattern in entries, pattern
    for needed in ("pyproject.toml", "setup.py", "README.md", "wmtp", "cli", "jobs", "docker"):
        assert needed not in entries


class RecordingClient:
    """Stands in for docker.from_env(): records the build request, streams one line back."""

    def __init__(self):
        self.calls = []
        self.api = self

    def build(self, **kwargs):
        self.calls.append(kwargs)
        return iter([{"stream": "Step 1/1 : FROM base\n"}])


def test_image_build_sends_the_checkout_and_docker_dockerfile(monkeypatch):
    client = RecordingClient()
    monkeypatch.setattr(image, "docker_client", lambda: client)
    result = runner.invoke(app, ["image", "build", "--context", str(REPO_ROOT), "--tag", "registry.test/wmtp:1"])
    assert result.exit_code == 0, result.output
    assert client.calls == [
        {
            "path": str(REPO_ROOT),
            "dockerfile": "docker/Dockerfile",
            "tag": "registry.test/wmtp:1",
            "rm": True,
            "decode": True,
        }
    ]
    assert result.output.splitlines()[-1] == "built registry.test/wmtp:1"


def test_dockerfile_outside_the_context_is_one_line(tmp_path):
    outside = tmp_path / "Dockerfile"
    outside.write_text("FROM scratch\n")
    result = runner.invoke(app, ["image", "build", "--file", str(outside), "--context", str(REPO_ROOT)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {outside}: the Dockerfile must be inside the build context {REPO_ROOT}"
    ]


def test_image_build_without_an_engine_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")
    result = runner.invoke(app, ["image", "build", "--context", str(REPO_ROOT)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: no Docker engine reachable at unix://{tmp_path}/none.sock")


@pytest.mark.parametrize(
    "image_ref, repository, tag",
    [
        ("localhost:5000/wmtp/trainer:v1", "localhost:5000/wmtp/trainer", "v1"),  # a registry port is not a tag
        ("localhost:5000/wmtp/trainer", "localhost:5000/wmtp/trainer", "latest"),
        ("ghcr.io/lab/wmtp:2024.1", "ghcr.io/lab/wmtp", "2024.1"),
        ("wmtp", "wmtp", "latest"),
    ],
)
def test_split_tag(image_ref, repository, tag):
    assert image.split_tag(image_ref) == (repository, tag)


class StubDockerSDK:
    """The few parts of the docker SDK that `wmtp image push` uses: from_env().ping() and api.push()."""

    def __init__(self, events):
        self.events, self.pushes, self.api = events, [], self

    def from_env(self, **kwargs):
        return self

    def ping(self):
        return True

    def push(self, repository, **kwargs):
        self.pushes.append((repository, kwargs))
        return iter(self.events)


def test_image_push_sends_repository_and_tag_and_prints_progress(monkeypatch):
    sdk = StubDockerSDK(
        [
            {"status": "The push refers to repository [localhost:5000/wmtp/trainer]"},
            {"status": "Pushed", "id": "abc"},
            {"status": "v1: digest: sha256:00 size: 1"},
        ]
    )
    monkeypatch.setitem(sys.modules, "docker", sdk)
    result = runner.invoke(app, ["image", "push", "--tag", "localhost:5000/wmtp/trainer:v1"])
    assert result.exit_code == 0, result.output
    assert sdk.pushes == [("localhost:5000/wmtp/trainer", {"tag": "v1", "stream": True, "decode": True})]
    assert result.output.splitlines() == [
        "The push refers to repository [localhost:5000/wmtp/trainer]",
        "Pushed",
        "v1: digest: sha256:00 size: 1",
        "pushed localhost:5000/wmtp/trainer:v1",
    ]


def test_image_push_of_the_default_image_and_a_refusal(monkeypatch):
    sdk = StubDockerSDK([{"status": "Preparing"}, {"error": "denied:\n requested access to the resource is denied"}])
    monkeypatch.setitem(sys.modules, "docker", sdk)
    result = runner.invoke(app, ["image", "push"])
    default = image.default_image()
    assert sdk.pushes == [
        (*image.split_tag(default)[:1], {"tag": image.split_tag(default)[1], "stream": True, "decode": True})
    ]
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == (
        f"error: pushing {default} failed: denied: requested access to the resource is denied"
    )
