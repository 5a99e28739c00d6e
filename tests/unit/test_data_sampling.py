"""Sampling from the index alone: correct-only, balanced ratios, curriculum windows, spec validation."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from wmtp.data.index import INDEX_DTYPE, DatasetIndex
from wmtp.data.sampling import SamplingSpec, apportion, curriculum_plan, draw_indices, stage_bounds
from wmtp.data.schema import DataError


def make_index(is_correct, difficulty) -> DatasetIndex:
    rows = np.zeros(len(is_correct), dtype=INDEX_DTYPE)
    rows["is_correct"] = is_correct
    rows["difficulty"] = difficulty
    rows["offset"] = np.arange(len(rows)) * 100
    rows["length"] = 100
    return DatasetIndex(rows, Path("train.jsonl"), {})


@pytest.fixture
def index() -> DatasetIndex:
    rng = np.random.default_rng(7)
    n = 3000
    return make_index(rng.random(n) < 0.6, rng.integers(0, 12, n))


def bin_of(difficulty: np.ndarray) -> np.ndarray:
    names = np.array(
        ["unknown", "low", "low", "low", "medium", "medium", "medium", "medium", "high", "high", "high", "high"]
    )
    return names[difficulty]


def test_correct_only_draws_distinct_correct_rows(index):
    rows = draw_indices(index, SamplingSpec(strategy="correct_only", n_samples=500), seed=1)
    assert rows.dtype == np.int64 and len(rows) == 500 == len(set(rows.tolist()))
    assert index.is_correct[rows].all()
    everything = draw_indices(index, SamplingSpec(strategy="correct_only"), seed=1)
    assert sorted(everything.tolist()) == np.flatnonzero(index.is_correct).tolist()


def test_draws_are_deterministic_per_seed(index):
    for strategy in ("correct_only", "balanced", "curriculum"):
        spec = SamplingSpec(strategy=strategy, n_samples=400)
        first, again, other = (draw_indices(index, spec, seed=s) for s in (3, 3, 4))
        np.testing.assert_array_equal(first, again)
        assert not np.array_equal(first, other)


@pytest.mark.parametrize("ratio", [0.5, 0.3, 0.8])
def test_balanced_hits_the_ratio_exactly(index, ratio):
    rows = draw_indices(index, SamplingSpec(strategy="balanced", n_samples=1000, correct_ratio=ratio), seed=0)
    assert len(rows) == 1000 == len(set(rows.tolist()))
    assert index.is_correct[rows].sum() == round(1000 * ratio)


def test_balanced_without_n_takes_the_largest_draw(index):
    n_incorrect = int((~index.is_correct).sum())
    rows = draw_indices(index, SamplingSpec(strategy="balanced", correct_ratio=0.5), seed=0)
    assert len(rows) == 2 * n_incorrect  # incorrect rows are the scarcer half
    assert index.is_correct[rows].sum() == n_incorrect


def test_asking_for_too_many_rows_says_how_many_exist(index):
    n_correct = int(index.is_correct.sum())
    with pytest.raises(DataError, match=rf"sampling\.n_samples: 9999 .* only {n_correct} correct rows"):
        draw_indices(index, SamplingSpec(strategy="correct_only", n_samples=9999), seed=0)
    with pytest.raises(DataError, match=r"sampling\.n_samples: 2900 balanced .*at most \d+ rows"):
        draw_indices(index, SamplingSpec(strategy="balanced", n_samples=2900), seed=0)
    with pytest.raises(DataError, match=r"sampling\.n_samples: 2900 curriculum .*low=\d+, medium=\d+"):
        draw_indices(index, SamplingSpec(strategy="curriculum", n_samples=2900), seed=0)


def test_no_correct_rows_is_named(tmp_path):
    index = make_index(np.zeros(10, bool), np.ones(10, int))
    with pytest.raises(DataError, match=r"train\.jsonl: no correct rows"):
        draw_indices(index, SamplingSpec(strategy="correct_only"), seed=0)


def test_curriculum_windows_follow_the_default_schedule(index):
    n = 1000
    rows = draw_indices(index, SamplingSpec(strategy="curriculum", n_samples=n), seed=0)
    assert len(rows) == n == len(set(rows.tolist()))
    bins = bin_of(index.difficulty[rows])
    windows = {(0, 300): (0.7, 0.3, 0.0), (300, 700): (0.3, 0.6, 0.1), (700, 1000): (0.1, 0.5, 0.4)}
    for (start, end), (low, medium, high) in windows.items():
        window = bins[start:end]
        size = end - start
        assert (window == "low").sum() == round(size * low)
        assert (window == "medium").sum() == round(size * medium)
        assert (window == "high").sum() == round(size * high)
    assert not (bins == "unknown").any()  # weight 0 by default


def test_curriculum_unknown_bin_is_configurable(index):
    spec = SamplingSpec(
        strategy="curriculum",
        n_samples=400,
        curriculum_schedule=[
            {"until": 0.5, "weights": {"unknown": 1.0}},
            {"until": 1.0, "weights": {"low": 1, "high": 1}},
        ],
    )
    bins = bin_of(index.difficulty[draw_indices(index, spec, seed=0)])
    assert (bins[:200] == "unknown").all()
    assert (bins[200:] == "low").sum() == 100 == (bins[200:] == "high").sum()


def test_curriculum_without_n_uses_every_row_it_can(index):
    spec = SamplingSpec(strategy="curriculum")
    rows = draw_indices(index, spec, seed=0)
    plan = curriculum_plan(spec, len(rows) + 1)
    pools = [((index.difficulty >= lo) & (index.difficulty <= hi)).sum() for lo, hi in spec.curriculum_bins.values()]
    assert np.any(plan.sum(axis=0) > pools)  # one more row would not fit
    assert len(set(rows.tolist())) == len(rows)


def test_apportion_and_bounds():
    assert apportion(10, [0.7, 0.3, 0.0]) == [7, 3, 0]
    assert apportion(7, [1, 1, 1]) == [3, 2, 2]
    assert sum(apportion(101, [0.1, 0.5, 0.4])) == 101
    assert stage_bounds(SamplingSpec(strategy="curriculum"), 10) == [(0, 3), (3, 7), (7, 10)]


def test_spec_accepts_yaml_shaped_values():
    spec = SamplingSpec.model_validate(
        {
            "strategy": "curriculum",
            "curriculum_bins": {"easy": [1, 5], "hard": [6, 20]},
            "curriculum_schedule": [{"until": 1.0, "weights": {"easy": 1, "hard": 1}}],
        }
    )
    assert spec.curriculum_bins["hard"] == (6, 20)
    assert SamplingSpec(strategy="curriculum").curriculum_bins == {
        "unknown": (0, 0),
        "low": (1, 3),
        "medium": (4, 7),
        "high": (8, 11),
    }


BAD_SPECS = [
    ({"strategy": "random"}, "strategy", "correct_only"),
    ({"strategy": "balanced", "ratio": 0.5}, "ratio", "Extra inputs are not permitted"),
    ({"strategy": "balanced", "correct_ratio": 1.5}, "correct_ratio", "less than or equal to 1"),
    ({"strategy": "balanced", "n_samples": 0}, "n_samples", "greater than or equal to 1"),
    (
        {
            "strategy": "curriculum",
            "curriculum_bins": {"a": [1, 5], "b": [5, 9]},
            "curriculum_schedule": [{"until": 1.0, "weights": {"a": 1}}],
        },
        "curriculum_bins",
        "'a' and 'b' overlap",
    ),
    ({"strategy": "curriculum", "curriculum_bins": {"a": [5, 1]}}, "curriculum_bins", r"expected \[low, high\]"),
    (
        {"strategy": "curriculum", "curriculum_schedule": [{"until": 1.0, "weights": {"hard": 1}}]},
        "",
        r"unknown bin\(s\) \['hard'\]; expected names from curriculum_bins",
    ),
    (
        {"strategy": "curriculum", "curriculum_schedule": [{"until": 0.5, "weights": {"low": 1}}]},
        "",
        "expected strictly increasing, the last 1.0",
    ),
    (
        {"strategy": "curriculum", "curriculum_schedule": [{"until": 1.0, "weights": {"low": -1, "high": 2}}]},
        "weights",
        r"negative; expected shares ≥ 0",
    ),
    ({"strategy": "curriculum", "curriculum_schedule": [{"until": 1.0, "weights": {"low": 0}}]}, "weights", "sum to 0"),
    (
        {"strategy": "curriculum", "curriculum_bins": {}},
        "curriculum_bins",
        r"expected at least one bin, e\.g\. \{low: \[1, 3\]\}",
    ),
    (
        {"strategy": "curriculum", "curriculum_bins": {"a": [1, 200]}},
        "curriculum_bins",
        r"bin 'a' is \[1, 200\]; expected \[low, high\] with 0 ≤ low ≤ high ≤ 127",
    ),
    ({"strategy": "curriculum", "curriculum_schedule": []}, "", r"curriculum_schedule: expected at least one window"),
]


@pytest.mark.parametrize("payload,location,message", BAD_SPECS)
def test_bad_spec_says_what_is_expected(payload, location, message):
    with pytest.raises(ValidationError) as info:
        SamplingSpec.model_validate(payload)
    text = str(info.value)
    assert location in text
    assert re.search(message, text), text
