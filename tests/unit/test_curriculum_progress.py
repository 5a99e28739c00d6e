"""The curriculum follows the stage's optimizer steps: windows are fractions of all steps of all epochs
(`min(max_steps, num_epochs × steps per epoch)`), whatever the number of epochs or a `max_steps` cap."""

from __future__ import annotations

import numpy as np
import pytest

from tests.unit.test_data_sampling import bin_of, make_index
from wmtp.data.sampling import SamplingSpec, draw_indices
from wmtp.distributed import DistContext
from wmtp.train.data_loading import build_train_sampler
from wmtp.train.sections import TrainSection

WINDOWS = {(0.0, 0.3): (0.7, 0.3, 0.0), (0.3, 0.7): (0.3, 0.6, 0.1), (0.7, 1.0): (0.1, 0.5, 0.4)}  # default schedule
SPEC = SamplingSpec(strategy="curriculum", n_samples=1000)


@pytest.fixture(scope="module")
def index():
    rng = np.random.default_rng(7)
    n = 3000
    return make_index(rng.random(n) < 0.6, rng.integers(0, 12, n))


def stage_steps(index, train: TrainSection, world_size: int, epochs=None, seed: int = 0) -> list[np.ndarray]:
    """The rows of every optimizer step of the stage, as the loop takes them from every rank's sampler:
    per epoch `micro_batches_per_epoch` micro-batches of `batch_size` per rank, `grad_accum_steps` a step."""
    rows = draw_indices(index, SPEC, seed=seed)
    ranks = [
        build_train_sampler(index, rows, SPEC, train, DistContext(rank=r, world_size=world_size))
        for r in range(world_size)
    ]
    total, micro = ranks[0].total_steps, ranks[0].micro_batches_per_epoch
    assert {(r.total_steps, r.micro_batches_per_epoch) for r in ranks} == {(total, micro)}
    per_step = train.batch_size * train.grad_accum_steps  # per rank
    steps: list[np.ndarray] = []
    for epoch in range(train.num_epochs if epochs is None else epochs):
        shards = []
        for r in ranks:
            r.sampler.set_epoch(epoch)
            shards.append(np.array(list(r.sampler))[: micro * train.batch_size])
        for j in range(micro // train.grad_accum_steps):
            steps.append(np.concatenate([rows[s[j * per_step : (j + 1) * per_step]] for s in shards]))
    return steps[:total]


def window_shares(index, steps: list[np.ndarray]) -> dict[tuple[float, float], tuple[float, ...]]:
    """Difficulty-bin shares of the rows of each window's steps (step k is in the window holding k / total)."""
    total = len(steps)
    shares = {}
    for start, end in WINDOWS:
        chosen = [s for k, s in enumerate(steps) if start <= k / total < end]
        bins = bin_of(index.difficulty[np.concatenate(chosen)])
        shares[(start, end)] = tuple(float((bins == name).mean()) for name in ("low", "medium", "high"))
    return shares


def assert_schedule(index, steps):
    for window, shares in window_shares(index, steps).items():
        assert shares == pytest.approx(WINDOWS[window], abs=0.01), window


def test_three_epochs_follow_the_schedule_over_all_their_steps(index):
    train = TrainSection(num_epochs=3, batch_size=4, grad_accum_steps=2)
    steps = stage_steps(index, train, world_size=2)
    assert len(steps) == 3 * (1000 // 2 // 4 // 2)  # every step of the three epochs
    assert_schedule(index, steps)
    # Not restarted each epoch: the second epoch opens in the second window, the third ends in the last.
    per_epoch = len(steps) // 3
    second_start = bin_of(index.difficulty[np.concatenate(steps[per_epoch : per_epoch + 10])])
    assert (second_start == "high").any()
    third_end = bin_of(index.difficulty[np.concatenate(steps[-20:])])
    assert (third_end == "high").mean() == pytest.approx(0.4, abs=0.06)


def test_max_steps_shorter_than_an_epoch_reaches_the_hard_window(index):
    train = TrainSection(max_steps=40, batch_size=4, grad_accum_steps=2)
    steps = stage_steps(index, train, world_size=2)
    assert len(steps) == 40 < 1000 // 2 // 4 // 2
    assert_schedule(index, steps)


def test_rows_repeat_within_an_epoch_only_when_its_windows_ask_for_more_than_the_draw_holds(index):
    rows = draw_indices(index, SPEC, seed=0)
    drawn = {name: int((bin_of(index.difficulty[rows]) == name).sum()) for name in ("low", "medium", "high")}
    steps = stage_steps(index, TrainSection(num_epochs=3, batch_size=4, grad_accum_steps=2), world_size=1)
    per_epoch = len(steps) // 3
    for epoch in range(3):
        taken = np.concatenate(steps[epoch * per_epoch : (epoch + 1) * per_epoch])
        bins = bin_of(index.difficulty[taken])
        for name, held in drawn.items():
            asked = int((bins == name).sum())
            distinct = len(set(taken[bins == name].tolist()))
            assert distinct == min(asked, held), (epoch, name)  # every drawn row before any repeat
    # One epoch, no cap: the windows ask each bin for about what the draw holds (rounding to whole steps).
    one = np.concatenate(stage_steps(index, TrainSection(batch_size=4, grad_accum_steps=2), world_size=1))
    assert len(one) - len(set(one.tolist())) <= 10


def test_the_order_is_deterministic_and_resumes_mid_stage(index):
    train = TrainSection(num_epochs=2, batch_size=4, grad_accum_steps=1, seed=3)
    rows = draw_indices(index, SPEC, seed=3)
    first, again = (build_train_sampler(index, rows, SPEC, train, DistContext()).sampler for _ in range(2))
    first.set_epoch(1)
    full = list(first)
    again.set_epoch(1)
    iterator = iter(again)
    head = [next(iterator) for _ in range(37)]
    resumed = build_train_sampler(index, rows, SPEC, train, DistContext()).sampler
    resumed.load_state_dict(again.state_dict())
    assert head + list(resumed) == full
    other = build_train_sampler(index, rows, SPEC, train.model_copy(update={"seed": 4}), DistContext()).sampler
    other.set_epoch(1)
    assert list(other) != full


def test_other_strategies_keep_the_per_epoch_shuffle(index):
    spec = SamplingSpec(strategy="balanced", n_samples=1000)
    rows = draw_indices(index, spec, seed=0)
    sampler = build_train_sampler(
        index, rows, spec, TrainSection(num_epochs=3, batch_size=4), DistContext(rank=1, world_size=2)
    ).sampler
    assert sampler.order is None and sampler.shuffle
    sampler.set_epoch(2)
    expected = np.random.default_rng([42, 2]).permutation(1000)[1::2]
    assert list(sampler) == expected.tolist()
