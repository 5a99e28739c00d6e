"""pass@k: the unbiased estimator of Chen et al. (2021), averaged over tasks."""

from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

from wmtp.eval.errors import EvalError

SUMMARY_KS = (1, 5, 10)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (c of them correct) is correct.

    `1 − C(n−c, k) / C(n, k)` in its product form `1 − ∏_{i=n−c+1}^{n} (1 − k/i)`, which never
    forms the huge binomials (exact for any n, no overflow).
    """
    if k < 1:
        raise EvalError(f"pass@k needs k ≥ 1, got k={k}")
    if not 0 <= c <= n:
        raise EvalError(f"pass@k needs 0 ≤ correct ≤ samples, got correct={c}, samples={n}")
    if k > n:
        raise EvalError(f"pass@{k} needs at least {k} samples per task, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def resolve_ks(requested: Optional[Sequence[int]], samples_per_task: int) -> list[int]:
    """The k values to report: `requested`, or those of 1/5/10 that fit in `samples_per_task`."""
    if not requested:
        return [k for k in SUMMARY_KS if k <= samples_per_task]
    for k in requested:
        if k < 1:
            raise EvalError(f"--k {k}: k must be at least 1")
        if k > samples_per_task:
            raise EvalError(
                f"--k {k} is larger than the {samples_per_task} samples per task: pass@k needs k ≤ n (raise --n)"
            )
    return sorted(set(requested))


def mean_pass_at_k(counts: Iterable[tuple[int, int]], ks: Sequence[int]) -> dict[str, float]:
    """`{"pass@k": mean over tasks}` from `(samples, correct)` per task."""
    counts = list(counts)
    if not counts:
        return {}
    return {f"pass@{k}": sum(pass_at_k(n, c, k) for n, c in counts) / len(counts) for k in ks}
