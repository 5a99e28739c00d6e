"""pass@k's 95 % interval (bootstrap over problems) and whitespace-normalised exact match."""

from __future__ import annotations

import random

import pytest

from wmtp.eval.benchmarks import Benchmark, Problem
from wmtp.eval.passk import bootstrap_ci95, exact_match, pass_at_k_ci95
from wmtp.eval.scoring import pass_at_k_metrics, summarise


def test_interval_of_constant_values_is_that_value():
    assert bootstrap_ci95([1.0] * 7) == [1.0, 1.0]
    assert bootstrap_ci95([0.0] * 164) == [0.0, 0.0]
    assert bootstrap_ci95([0.5]) == [0.5, 0.5]


def test_interval_of_half_passing_matches_the_normal_approximation():
    # 100 problems, 50 pass: the mean's standard error is 0.05, so the interval is about 0.5 ± 0.098.
    low, high = bootstrap_ci95([1.0] * 50 + [0.0] * 50)
    assert low < 0.5 < high
    assert low == pytest.approx(0.402, abs=0.025) and high == pytest.approx(0.598, abs=0.025)


def test_interval_is_reproducible_and_independent_of_problem_order():
    values = [1.0] * 30 + [0.0] * 70
    shuffled = values[:]
    random.Random(1).shuffle(shuffled)
    assert bootstrap_ci95(values) == bootstrap_ci95(values)
    assert bootstrap_ci95(shuffled) == pytest.approx(bootstrap_ci95(values), abs=0.03)


def test_pass_at_k_interval_per_k_uses_the_unbiased_estimator_per_problem():
    # Every problem has 2 of 4 samples correct: pass@1 = 0.5, pass@2 = 1 - C(2,2)/C(4,2) = 5/6 exactly.
    ci = pass_at_k_ci95([(4, 2)] * 10, [1, 2])
    assert ci["pass@1"] == pytest.approx([0.5, 0.5])
    assert ci["pass@2"] == pytest.approx([5 / 6, 5 / 6])


def test_exact_match_ignores_whitespace_only():
    reference = "    return a + b\n"
    assert exact_match("  return  a + b", reference)
    assert exact_match("\treturn a +\n b\n\n", reference)
    assert not exact_match("    return a+b\n", reference)  # tokens differ, not just whitespace
    assert not exact_match("", "")  # no reference: nothing matches it


def test_summary_has_interval_exact_match_and_their_metrics():
    problems = {str(i): Problem(str(i), "p", "", "", reference=f"return {i}\n") for i in range(4)}
    bench = Benchmark("humaneval", problems, ())
    records = [
        {
            "task_id": "0",
            "completion": "return 0",
            "passed": True,
            "status": "passed",
            "result": "passed",
            "exact_match": True,
        },
        {
            "task_id": "1",
            "completion": "return 9",
            "passed": False,
            "status": "failed",
            "result": "x",
            "exact_match": False,
        },
        {
            "task_id": "2",
            "completion": "pass",
            "passed": True,
            "status": "passed",
            "result": "passed",
            "exact_match": False,
        },
        {
            "task_id": "3",
            "completion": "pass",
            "passed": False,
            "status": "failed",
            "result": "x",
            "exact_match": False,
        },
    ]
    summary = summarise(records, bench, [1])
    assert summary["pass@1"] == 0.5 and summary["exact_match"] == 0.25
    low, high = summary["ci95"]["pass@1"]
    assert 0.0 <= low < 0.5 < high <= 1.0
    assert "bootstrap" in summary["ci95_method"]
    metrics = pass_at_k_metrics(summary)
    assert metrics["pass_at_1_ci95_low"] == low and metrics["pass_at_1_ci95_high"] == high
    assert metrics["exact_match"] == 0.25
