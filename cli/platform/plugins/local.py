"""--target local: `wmtp train` on this machine (torchrun when the spec asks for several processes).

The "manifest" of a local job is the command line it runs; `--dry-run` prints it. It runs in the
foreground, so status, logs, cancel and ls have nothing to find: each says so in one line (the run's
own output is on the terminal, its files in its run dir; Ctrl-C stops it and it saves on the way out).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from wmtp.errors import WmtpError
from wmtp_cli.envfile import read_env_file
from wmtp_cli.platform.target import JobRow, Target, not_available

if TYPE_CHECKING:
    from wmtp_cli.platform.context import JobContext, RenderedJob


def train_args(context: JobContext) -> list[str]:
    """`train EXP [--set …] [--preset P] --run-dir DIR`: the trainer arguments as `wmtp train` takes them."""
    return ["train", *context.trainer_args[2:]]  # trainer_args starts with `-m wmtp.train`


def command_line(context: JobContext) -> str:
    """What a user would type: `wmtp train …`, shell-quoted."""
    return shlex.join(["wmtp", *train_args(context)]) + "\n"


def child_environment(env_file: Optional[Path]) -> dict[str, str]:
    """This environment plus the --env-file's variables (the environment wins, as in `wmtp train`)."""
    values = read_env_file(env_file) if env_file else {}
    return {**values, **os.environ}


# The child runs our CLI by its own import name with the working directory taken off sys.path: `python
# -m` and `-c` put the cwd first, where a user's folder could shadow any package we import.
CHILD_MAIN = "import sys; del sys.path[0]; from wmtp_cli.main import app; app(prog_name='wmtp')"


def run_train(context: JobContext, env_file: Optional[Path]) -> int:
    """Run `wmtp train` as a child process in the foreground; return its exit status."""
    command = [sys.executable, "-c", CHILD_MAIN, *train_args(context)]
    return subprocess.call(command, env=child_environment(env_file))


def not_tracked(action: str) -> WmtpError:
    """Why a lifecycle command has nothing to do for a foreground job."""
    return not_available(
        action,
        "local",
        "the run is in the foreground and writes to its run dir (see `wmtp submit … --target local --dry-run`)",
    )


class LocalTarget(Target):
    name = "local"
    summary = (
        "`wmtp train EXPERIMENT …` on this machine in the foreground (`torchrun` when the spec asks for more "
        "than one process), tracked in `storage/mlflow` unless `MLFLOW_TRACKING_URI` is set"
    )
    needs = "nothing else"
    in_container = False
    tracks_jobs = False

    def render(self, context: JobContext, env_file: Optional[Path]) -> str:
        return command_line(context)

    def parse(self, manifest: str) -> None:
        return None  # a command line, not a document

    def starting_line(self, job: RenderedJob) -> Optional[str]:
        return f"running: {job.manifest.strip()}"

    def submit(self, job: RenderedJob, env_file: Optional[Path], server_dry_run: bool) -> tuple[list[str], int]:
        return [], run_train(job.context, env_file)

    def status(self, ref: str, settings: dict[str, Any]) -> list[str]:
        raise not_tracked("status")

    def logs(self, ref: str, settings: dict[str, Any], tail: int, follow: bool) -> list[str]:
        raise not_tracked("logs")

    def cancel(self, ref: str, settings: dict[str, Any]) -> list[str]:
        raise not_tracked("cancel")

    def list_jobs(self, settings: dict[str, Any]) -> list[JobRow]:
        raise not_tracked("ls")


TARGET = LocalTarget()
