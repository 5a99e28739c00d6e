"""Which rows of a split a stage trains on, drawn from the index alone, deterministically from a seed.

Strategies:

- `correct_only` (baseline, rho1): correct rows only.
- `balanced` (critic): `correct_ratio` of the draw is correct rows, the rest incorrect rows.
- `curriculum` (verifiable): rows grouped into difficulty bins; training progress is cut into windows
  (`curriculum_schedule`), each with its own shares of the bins. The windows are fractions of the
  stage's optimizer steps, over all its epochs: optimizer step `k` of `total_steps`
  (`min(max_steps, num_epochs × steps per epoch)`) belongs to the first window whose `until` exceeds
  `k / total_steps`, and its rows come from the bins in that window's shares (`CurriculumOrder`, the
  stage's order of the drawn rows, epoch by epoch). The draw itself holds each bin in the schedule's
  average share (as if one row were one step); in the returned array, position `p` of `n` belongs to
  the first window whose `until` exceeds `p / n`. Rows whose difficulty is in no bin are never drawn;
  the bin `unknown` (difficulty 0) has weight 0 in the default schedule — give it a weight to train on
  unknown rows.

No row is drawn twice. `n_samples: None` takes as many rows as the strategy can without repeating one:
all correct rows; the largest draw with exactly `correct_ratio`; the largest draw whose every bin
demand fits. Asking for more than that raises `DataError` saying how many are available.

Within one epoch, a curriculum stage repeats a drawn row only when that epoch's steps ask a bin for
more rows than the draw holds in it: the first epoch of a 3-epoch run is mostly the first window, which
asks for more easy rows than the draw's average share; rounding windows to whole steps can ask a few more.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from wmtp.data.index import DatasetIndex
from wmtp.data.schema import DIFFICULTY_MAX, DIFFICULTY_MIN, DataError


def default_bins() -> dict[str, tuple[int, int]]:
    return {"unknown": (0, 0), "low": (1, 3), "medium": (4, 7), "high": (8, 11)}


def default_schedule() -> list["CurriculumStage"]:
    return [
        CurriculumStage(until=0.3, weights={"low": 0.7, "medium": 0.3, "high": 0.0}),
        CurriculumStage(until=0.7, weights={"low": 0.3, "medium": 0.6, "high": 0.1}),
        CurriculumStage(until=1.0, weights={"low": 0.1, "medium": 0.5, "high": 0.4}),
    ]


class CurriculumStage(BaseModel):
    """One window of training progress and the share of each difficulty bin inside it."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # weights of .nan / .inf are refused

    until: float = Field(
        gt=0,
        le=1,
        description="End of this window as a fraction of the stage's optimizer steps over all epochs "
        "(0.3 = first 30 %); "
        "it starts where the previous one ends.",
    )
    weights: dict[str, float] = Field(
        description="Bin name → share of this window's samples (normalised; a bin left out gets 0).",
    )

    @field_validator("weights")
    @classmethod
    def _weights_positive(cls, weights: dict[str, float]) -> dict[str, float]:
        negative = [name for name, w in weights.items() if w < 0]
        if negative:
            raise ValueError(f"weights of {negative} are negative; expected shares ≥ 0")
        if sum(weights.values()) <= 0:
            raise ValueError("weights sum to 0; expected at least one bin with a positive share")
        return weights


class SamplingSpec(BaseModel):
    """How a stage draws its training rows from a split's index (see the module doc)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    strategy: Literal["correct_only", "balanced", "curriculum"] = Field(
        description="correct_only (baseline, rho1) | balanced (critic) | curriculum (verifiable)",
    )
    n_samples: Optional[int] = Field(
        default=None,
        ge=1,
        description="Rows to draw; None = every eligible row the strategy can use without repeating one.",
    )
    correct_ratio: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="balanced: fraction of the draw that is correct solutions (the rest incorrect).",
    )
    curriculum_bins: dict[str, tuple[int, int]] = Field(
        default_factory=default_bins,
        description="curriculum: bin name → inclusive difficulty range [low, high]; 0 = unknown difficulty.",
    )
    curriculum_schedule: list[CurriculumStage] = Field(
        default_factory=default_schedule,
        description="curriculum: windows in training order, each {until, weights}; the last ends at 1.0.",
    )

    @field_validator("curriculum_bins")
    @classmethod
    def _bins_disjoint(cls, bins: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
        if not bins:
            raise ValueError("expected at least one bin, e.g. {low: [1, 3]}")
        for name, (low, high) in bins.items():
            if not DIFFICULTY_MIN <= low <= high <= DIFFICULTY_MAX:
                raise ValueError(
                    f"bin {name!r} is [{low}, {high}]; expected [low, high] with "
                    f"{DIFFICULTY_MIN} ≤ low ≤ high ≤ {DIFFICULTY_MAX}"
                )
        ordered = sorted(bins.items(), key=lambda item: item[1][0])
        for (name_a, (_, high_a)), (name_b, (low_b, _)) in zip(ordered, ordered[1:]):
            if low_b <= high_a:
                raise ValueError(f"bins {name_a!r} and {name_b!r} overlap; expected disjoint difficulty ranges")
        return bins

    @model_validator(mode="after")
    def _schedule_matches_bins(self) -> "SamplingSpec":
        stages = self.curriculum_schedule
        if not stages:
            raise ValueError(
                "curriculum_schedule: expected at least one window, e.g. [{until: 1.0, weights: {low: 1}}]"
            )
        ends = [stage.until for stage in stages]
        if any(b <= a for a, b in zip(ends, ends[1:])) or not math.isclose(ends[-1], 1.0):
            raise ValueError(
                f"curriculum_schedule: `until` values are {ends}; expected strictly increasing, the last 1.0"
            )
        for i, stage in enumerate(stages):
            unknown = sorted(set(stage.weights) - set(self.curriculum_bins))
            if unknown:
                raise ValueError(
                    f"curriculum_schedule[{i}].weights: unknown bin(s) {unknown}; "
                    f"expected names from curriculum_bins {sorted(self.curriculum_bins)}"
                )
        return self


# ----------------------------------------------------------------------------- drawing


def draw_indices(index: DatasetIndex, spec: SamplingSpec, seed: int) -> np.ndarray:
    """Row numbers (int64) of `index` to train on, per `spec`; the same arguments give the same rows."""
    rng = np.random.default_rng(seed)
    if spec.strategy == "correct_only":
        return draw_correct_only(index, spec.n_samples, rng)
    if spec.strategy == "balanced":
        return draw_balanced(index, spec.n_samples, spec.correct_ratio, rng)
    return draw_curriculum(index, spec, rng)


def draw_correct_only(index: DatasetIndex, n_samples: int | None, rng: np.random.Generator) -> np.ndarray:
    correct = np.flatnonzero(index.is_correct)
    n = len(correct) if n_samples is None else n_samples
    if len(correct) == 0:
        raise DataError(f"{index.jsonl_path}: no correct rows to sample (strategy correct_only)")
    if n > len(correct):
        raise DataError(
            f"sampling.n_samples: {n} requested but {index.jsonl_path} has only {len(correct)} correct rows "
            f"(set n_samples ≤ {len(correct)} or null for all)"
        )
    return rng.permutation(correct)[:n].astype(np.int64)


def largest_balanced_draw(n_correct: int, n_incorrect: int, ratio: float) -> int:
    """The most rows a draw with exactly `ratio` correct can take without repeating a row."""
    limits = []
    if ratio > 0:
        limits.append(n_correct / ratio)
    if ratio < 1:
        limits.append(n_incorrect / (1 - ratio))
    return int(math.floor(min(limits) + 1e-9))


def draw_balanced(index: DatasetIndex, n_samples: int | None, ratio: float, rng: np.random.Generator) -> np.ndarray:
    correct = np.flatnonzero(index.is_correct)
    incorrect = np.flatnonzero(~index.is_correct)
    largest = largest_balanced_draw(len(correct), len(incorrect), ratio)
    n = largest if n_samples is None else n_samples
    n_correct = int(round(n * ratio))
    if n == 0 or n_correct > len(correct) or n - n_correct > len(incorrect):
        raise DataError(
            f"sampling.n_samples: {n or 'any'} balanced rows at correct_ratio {ratio} need {n_correct} correct "
            f"and {n - n_correct} incorrect rows; {index.jsonl_path} has {len(correct)} and {len(incorrect)} "
            f"(at most {largest} rows at this ratio)"
        )
    chosen = np.concatenate([rng.permutation(correct)[:n_correct], rng.permutation(incorrect)[: n - n_correct]])
    return rng.permutation(chosen).astype(np.int64)


def apportion(total: int, weights: list[float]) -> list[int]:
    """Split `total` into integers proportional to `weights` (largest remainder; ties to the earlier)."""
    weight_sum = sum(weights)
    exact = [total * w / weight_sum for w in weights]
    counts = [int(math.floor(x)) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def stage_bounds(spec: SamplingSpec, n: int) -> list[tuple[int, int]]:
    """`[start, end)` positions of each curriculum window in a draw of `n` rows."""
    ends = [int(round(stage.until * n)) for stage in spec.curriculum_schedule]
    starts = [0] + ends[:-1]
    return list(zip(starts, ends))


def curriculum_plan(spec: SamplingSpec, n: int) -> np.ndarray:
    """Rows to take from each bin in each window: int array [n_windows, n_bins] (bins in spec order)."""
    names = list(spec.curriculum_bins)
    plan = np.zeros((len(spec.curriculum_schedule), len(names)), dtype=np.int64)
    for s, ((start, end), stage) in enumerate(zip(stage_bounds(spec, n), spec.curriculum_schedule)):
        plan[s] = apportion(end - start, [stage.weights.get(name, 0.0) for name in names])
    return plan


def bin_pools(index: DatasetIndex, spec: SamplingSpec) -> list[np.ndarray]:
    difficulty = index.difficulty
    return [np.flatnonzero((difficulty >= low) & (difficulty <= high)) for low, high in spec.curriculum_bins.values()]


def schedule_shares(spec: SamplingSpec) -> np.ndarray:
    """Each bin's share of a whole curriculum (its windows' shares weighted by their lengths), bins in spec order."""
    shares = np.zeros(len(spec.curriculum_bins))
    previous = 0.0
    for stage in spec.curriculum_schedule:
        weights = np.array([stage.weights.get(name, 0.0) for name in spec.curriculum_bins])
        shares += (stage.until - previous) * weights / weights.sum()
        previous = stage.until
    return shares


def largest_curriculum_draw(spec: SamplingSpec, pool_sizes: list[int]) -> int:
    """The most rows whose every bin demand fits its pool.

    Rounding moves each bin's demand by less than one row per window, so `(size + windows) / share`
    bounds the answer from above; count down from there to the first draw that fits.
    """
    shares = schedule_shares(spec)
    windows = len(spec.curriculum_schedule)
    n = int(min((size + windows) / share for size, share in zip(pool_sizes, shares) if share > 0))
    while n > 0 and np.any(curriculum_plan(spec, n).sum(axis=0) > pool_sizes):
        n -= 1
    return n


def draw_curriculum(index: DatasetIndex, spec: SamplingSpec, rng: np.random.Generator) -> np.ndarray:
    pools = [rng.permutation(pool) for pool in bin_pools(index, spec)]
    sizes = [len(pool) for pool in pools]
    largest = largest_curriculum_draw(spec, sizes)
    n = largest if spec.n_samples is None else spec.n_samples
    plan = curriculum_plan(spec, n) if n > 0 else None
    if plan is None or np.any(plan.sum(axis=0) > sizes):
        available = ", ".join(f"{name}={size}" for name, size in zip(spec.curriculum_bins, sizes))
        raise DataError(
            f"sampling.n_samples: {n or 'any'} curriculum rows do not fit the bins of {index.jsonl_path} "
            f"({available}); at most {largest} rows with this schedule"
        )
    taken = [0] * len(pools)
    windows = []
    for counts in plan:
        parts = []
        for b, count in enumerate(counts):
            parts.append(pools[b][taken[b] : taken[b] + count])
            taken[b] += count
        windows.append(rng.permutation(np.concatenate(parts)))
    return np.concatenate(windows).astype(np.int64)


# ----------------------------------------------------------------------------- order over a stage


def window_of(spec: SamplingSpec, steps: np.ndarray, total_steps: int) -> np.ndarray:
    """Curriculum window of each optimizer step (0-based): the first whose `until` exceeds step / total_steps.

    Steps at or past `total_steps` (never trained on) belong to the last window."""
    untils = np.array([stage.until for stage in spec.curriculum_schedule])
    progress = np.asarray(steps, dtype=np.float64) / max(total_steps, 1)
    return np.minimum(np.searchsorted(untils, progress, side="right"), len(untils) - 1)


class CurriculumOrder:
    """The order in which a curriculum stage trains on its drawn rows: `order(epoch)` → positions into `rows`.

    A stage consumes `rows_per_step` positions per optimizer step (all ranks: world size × batch size ×
    grad_accum_steps) and `steps_per_epoch` steps per epoch; positions `[j·rows_per_step, (j+1)·rows_per_step)`
    of epoch `e`'s order are the rows of step `k = e·steps_per_epoch + j`, whose window is `window_of(k)`.
    Each run of positions in one window is filled with the bins in that window's shares (largest
    remainder), then shuffled. A bin's rows are taken from a fresh permutation of the draw's rows in that
    bin each epoch, and only once that permutation is used up from another one, so a row repeats within
    an epoch only when the epoch asks its bin for more rows than the draw holds. A window whose bins are
    all empty in the draw (a tiny draw) takes the draw's other bins in their drawn proportions.

    The order has `len(rows)` positions like any epoch; those past the epoch's steps (or the stage's)
    are never trained on: they continue the schedule, apart from the trained ones. It depends only on its
    arguments and the epoch, so a resumed run gets the same order (`ShardedSampler` keeps the place in it).
    """

    def __init__(
        self,
        index: DatasetIndex,
        rows: np.ndarray,
        spec: SamplingSpec,
        *,
        total_steps: int,
        steps_per_epoch: int,
        rows_per_step: int,
        seed: int,
    ):
        self.spec, self.total_steps, self.steps_per_epoch, self.seed = spec, total_steps, steps_per_epoch, seed
        self.rows_per_step = max(rows_per_step, 1)
        self.n = len(rows)
        difficulty = index.difficulty[np.asarray(rows, dtype=np.int64)]
        self.members = [
            np.flatnonzero((difficulty >= low) & (difficulty <= high)) for low, high in spec.curriculum_bins.values()
        ]
        if sum(len(m) for m in self.members) != self.n:
            raise DataError(
                f"{index.jsonl_path}: {self.n - sum(len(m) for m in self.members)} drawn rows are in no "
                f"curriculum bin; expected rows drawn by the curriculum strategy"
            )
        sizes = np.array([len(m) for m in self.members], dtype=np.float64)
        self.weights = []
        for stage in spec.curriculum_schedule:
            weights = np.array([stage.weights.get(name, 0.0) for name in spec.curriculum_bins]) * (sizes > 0)
            self.weights.append(list(weights if weights.sum() > 0 else sizes))
        self._cached: tuple[int, np.ndarray] | None = None

    def __call__(self, epoch: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, self.epoch_order(epoch))
        return self._cached[1]

    def epoch_order(self, epoch: int) -> np.ndarray:
        order = np.empty(self.n, dtype=np.int64)
        if self.n == 0:
            return order
        rng = np.random.default_rng([self.seed, epoch, len(self.members)])
        steps = epoch * self.steps_per_epoch + np.arange(self.n) // self.rows_per_step
        windows = window_of(self.spec, steps, self.total_steps)
        # Positions never trained on (past the epoch's steps or the stage's) form runs of their own, so
        # they do not dilute the shares of the steps that are.
        trained = steps < min(self.total_steps, (epoch + 1) * self.steps_per_epoch)
        cuts = np.flatnonzero(np.diff(windows) | np.diff(trained)) + 1
        runs = list(zip([0, *cuts.tolist()], [*cuts.tolist(), self.n]))
        demand = np.array([apportion(end - start, self.weights[windows[start]]) for start, end in runs])
        supply = [self.cycle(members, int(total), rng) for members, total in zip(self.members, demand.sum(axis=0))]
        taken = np.zeros(len(self.members), dtype=np.int64)
        for (start, end), counts in zip(runs, demand):
            parts = [supply[b][taken[b] : taken[b] + count] for b, count in enumerate(counts)]
            taken += counts
            order[start:end] = rng.permutation(np.concatenate(parts))
        return order

    @staticmethod
    def cycle(members: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
        """`count` of `members`: permutations of them one after another, cut at `count`."""
        if count == 0:
            return members[:0]
        laps = -(-count // len(members))
        return np.concatenate([rng.permutation(members) for _ in range(laps)])[:count]
