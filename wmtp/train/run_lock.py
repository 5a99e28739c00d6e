"""One writer per run dir: `<run_dir>/.wmtp.lock`, held with `flock` for the run's lifetime.

A second `wmtp train` / `python -m wmtp.train` on the same run dir would resume from the first one's
live checkpoints and interleave its steps into the same `metrics.jsonl` and MLflow run, so it is
refused: one line naming the holder (pid, host, start time), exit 2, nothing written.

- The lock is an exclusive `flock` on the file. The kernel drops it when the holder dies, however it
  dies, so a lock file that is present but lockable is stale: it is taken over with a warning that
  names the process it was left by (the holder's JSON: pid, host, start time, command).
- A clean release removes the file, so a finished run dir holds no lock file.
- `flock` belongs to an open file description: a second open of the file, even in the same process,
  conflicts. Hence `wmtp train` launching torchrun passes its descriptor to torchrun (which then keeps
  the lock until its workers have exited, even if `wmtp train` itself is killed) and tells the workers
  with `WMTP_RUN_LOCK_HELD=<lock path>`; rank 0 of such a launch does not lock again. Started some other
  way (a container's torchrun), rank 0 takes the lock itself.

No torch here: `wmtp train` takes the lock before anything heavy is imported.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Optional

from wmtp.errors import WmtpError
from wmtp.tracking import redact

LOCK_FILE = ".wmtp.lock"
HELD_ENV = "WMTP_RUN_LOCK_HELD"  # set by the launcher for its torchrun workers: the lock path it holds

_held: dict[str, "RunLock"] = {}  # lock path → the lock this process holds (an in-process run locks once)


class RunDirBusy(WmtpError):
    """Another process holds the run dir's lock; the message names it (pid, host, start time)."""


def lock_path(run_dir: Path | str) -> Path:
    """`<run_dir>/.wmtp.lock`, absolute: the launcher and its workers compare it as a string."""
    return Path(os.path.abspath(run_dir)) / LOCK_FILE


def describe(holder: Optional[dict]) -> str:
    """`pid 123 on host h (started 2026-11-22T10:15:00+00:00)` from a lock file's JSON."""
    if not holder:
        return "a process that recorded no pid"
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} (started {holder.get('started', '?')})"


def read_holder(path: Path) -> Optional[dict]:
    """The JSON a lock file records, or None if it is missing, empty or not JSON."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class RunLock:
    """The run dir's lock, held by this process until `release()` (or the end of a `with` block)."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self.fd: Optional[int] = fd

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self.fd is None:
            return
        _held.pop(str(self.path), None)
        try:
            # Unlink while still locked, and only our own file: a process that opened it meanwhile
            # sees, once it gets the lock, that the path no longer leads to it and opens a fresh one.
            if os.path.samestat(os.fstat(self.fd), os.stat(self.path)):
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(run_dir: Path | str) -> RunLock:
    """Lock `run_dir` for this process (creating the dir if new), or raise `RunDirBusy` naming the holder.

    A lock file whose holder is gone is taken over with a warning on stderr. Nothing is written when
    the lock is refused.
    """
    path = lock_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)  # only reached by a writer: a held lock means the dir exists
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise RunDirBusy(
                    f"run dir {run_dir} is in use by {describe(holder_of_busy(path))}: one writer per "
                    "run dir; wait for it to finish or pass another --run-dir"
                ) from None
            raise WmtpError(f"{path}: cannot lock the run dir ({exc.strerror})") from None
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(os.fstat(fd), current):
            break
        os.close(fd)  # the holder released (and removed) the file between our open and flock: try the new one
    previous = read_holder(path)
    if previous is not None or os.fstat(fd).st_size:
        print(
            f"warning: run dir {run_dir}: taking over the stale lock of {describe(previous)}, which no longer holds it",
            file=sys.stderr,
        )
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": redact(" ".join(sys.argv)),
    }  # a --set tracking.uri may carry credentials
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    lock = RunLock(path, fd)
    _held[str(path)] = lock
    return lock


def holder_of_busy(path: Path, wait_s: float = 2.0) -> Optional[dict]:
    """The holder's record; a holder that has just taken the lock may not have written it yet."""
    deadline = time.monotonic() + wait_s
    while True:
        holder = read_holder(path)
        if holder is not None or time.monotonic() >= deadline:
            return holder
        time.sleep(0.05)


def hold(run_dir: Path | str) -> Optional[RunLock]:
    """Lock `run_dir` unless this process or the `wmtp train` that launched it already holds the lock.

    Returns the new lock (the caller releases it), or None when it is held already.
    """
    path = lock_path(run_dir)
    if str(path) in _held or os.environ.get(HELD_ENV) == str(path):
        return None
    return acquire(run_dir)
