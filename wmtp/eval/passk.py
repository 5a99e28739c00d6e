"""pass@k: the unbiased estimator of Chen et al. (2021), averaged over tasks."""

from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

from wmtp.errors import EvalError

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


def resolve_ks(requested: Optional[Sequence[int]], samples_per_task: int, more_samples: str = "raise --n") -> list[int]:
    """The k values to report: `requested`, or those of 1/5/10 that fit in `samples_per_task`.

    `more_samples` is how the caller's user gets more samples per task (`wmtp eval run` has `--n`;
    `wmtp eval score` takes them from its file)."""
    if not requested:
        return [k for k in SUMMARY_KS if k <= samples_per_task]
    for k in requested:
        if k < 1:
            raise EvalError(f"--k {k}: k must be at least 1")
        if k > samples_per_task:
            raise EvalError(
                f"--k {k} is larger than the {samples_per_task} samples per task: pass@k needs k ≤ n ({more_samples})"
            )
    return sorted(set(requested))


def mean_pass_at_k(counts: Iterable[tuple[int, int]], ks: Sequence[int]) -> dict[str, float]:
    """`{"pass@k": mean over tasks}` from `(samples, correct)` per task."""
    counts = list(counts)
    if not counts:
        return {}
    return {f"pass@{k}": sum(pass_at_k(n, c, k) for n, c in counts) / len(counts) for k in ks}


CI_RESAMPLES = 1000
CI_SEED = 0
CI_METHOD = f"bootstrap over problems: {CI_RESAMPLES} resamples (seed {CI_SEED}), percentile 2.5/97.5"


def bootstrap_ci95(values: Sequence[float], resamples: int = CI_RESAMPLES, seed: int = CI_SEED) -> list[float]:
    """95 % interval of the mean of per-problem values: [low, high], bootstrap percentile.

    The problems are resampled with replacement `resamples` times (a fixed seed, so the same samples
    give the same interval); low/high are the 2.5th and 97.5th percentiles of the resampled means
    (nearest rank). Problems, not samples, are resampled: the benchmark's problems are what a rerun
    on another benchmark of the same kind would change, and a problem's n samples are not independent.
    """
    import random

    values = [float(v) for v in values]
    if not values:
        return [0.0, 0.0]
    rng = random.Random(seed)
    count = len(values)
    means = sorted(sum(values[rng.randrange(count)] for _ in range(count)) / count for _ in range(resamples))
    # Clamped to the observed range: float sums of equal values may differ from them in the last bit.
    low, high = min(values), max(values)

    def percentile(q: float) -> float:
        return min(high, max(low, means[round(q * (resamples - 1))]))

    return [percentile(0.025), percentile(0.975)]


def pass_at_k_ci95(counts: Iterable[tuple[int, int]], ks: Sequence[int]) -> dict[str, list[float]]:
    """`{"pass@k": [low, high]}`: the bootstrap interval (`bootstrap_ci95`) of each k's mean over tasks."""
    counts = list(counts)
    if not counts:
        return {}
    return {f"pass@{k}": bootstrap_ci95([pass_at_k(n, c, k) for n, c in counts]) for k in ks}


def normalise_whitespace(text: str) -> str:
    """`text` with every run of whitespace as one space and none at the ends (exact match's comparison)."""
    return " ".join(text.split())


def exact_match(completion: str, reference: str) -> bool:
    """The completion equals the reference solution up to whitespace (False when there is no reference)."""
    return bool(reference.strip()) and normalise_whitespace(completion) == normalise_whitespace(reference)
