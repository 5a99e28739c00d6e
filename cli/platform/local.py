"""--target local: `wmtp train` on this machine (torchrun when the spec asks for several processes).

The "manifest" of a local job is the command line it runs; `--dry-run` prints it.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Optional

from wmtp_cli.envfile import read_env_file
from wmtp_cli.platform.context import JobContext
from wmtp.errors import WmtpError


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


def submit(context: JobContext, env_file: Optional[Path]) -> int:
    """Run `wmtp train` as a child process in the foreground; return its exit status."""
    command = [sys.executable, "-c", CHILD_MAIN, *train_args(context)]
    return subprocess.call(command, env=child_environment(env_file))


def not_tracked(action: str) -> WmtpError:
    return WmtpError(f"{action} is not available for --target local: the run is in the foreground and "
                     "writes to its run dir (see `wmtp submit … --target local --dry-run`)")
