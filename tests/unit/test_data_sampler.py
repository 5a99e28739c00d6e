"""ShardedSampler: disjoint rank shards, documented padding, per-epoch order, exact resume."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils.data import DataLoader

from wmtp.data.sampler import ShardedSampler
from wmtp.data.schema import DataError


def shards(n, world_size, epoch=0, **kwargs) -> list[list[int]]:
    result = []
    for rank in range(world_size):
        sampler = ShardedSampler(n, rank, world_size, seed=5, **kwargs)
        sampler.set_epoch(epoch)
        result.append(list(sampler))
    return result


@pytest.mark.parametrize("n,world_size", [(100, 4), (103, 4), (7, 3), (5, 1)])
def test_drop_last_shards_are_disjoint_and_equal(n, world_size):
    parts = shards(n, world_size, drop_last=True)
    flat = list(itertools.chain(*parts))
    assert len(flat) == len(set(flat)) == (n // world_size) * world_size
    assert {len(p) for p in parts} == {n // world_size}


@pytest.mark.parametrize("n,world_size", [(100, 4), (103, 4), (7, 3), (2, 4)])
def test_padding_covers_every_item_and_repeats_at_most_world_size_minus_one(n, world_size):
    parts = shards(n, world_size, drop_last=False)
    flat = list(itertools.chain(*parts))
    assert set(flat) == set(range(n))
    assert len(flat) - n == (-n) % world_size <= world_size - 1
    assert {len(p) for p in parts} == {-(-n // world_size)}


def test_epochs_reshuffle_deterministically():
    first, again, second = shards(50, 2, epoch=0), shards(50, 2, epoch=0), shards(50, 2, epoch=1)
    assert first == again and first != second
    assert sorted(first[0] + first[1]) == sorted(second[0] + second[1]) == list(range(50))


def test_unshuffled_shards_interleave_so_ranks_progress_together():
    parts = shards(12, 3, shuffle=False)
    assert parts == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]]


def test_resume_continues_with_the_same_order():
    reference = ShardedSampler(40, 1, 2, seed=9)
    reference.set_epoch(3)
    full = list(reference)
    interrupted = ShardedSampler(40, 1, 2, seed=9)
    interrupted.set_epoch(3)
    iterator = iter(interrupted)
    consumed = [next(iterator) for _ in range(7)]
    state = interrupted.state_dict()
    assert state["epoch"] == 3 and state["position"] == 7
    resumed = ShardedSampler(40, 1, 2, seed=9)
    resumed.load_state_dict(state)
    assert consumed + list(resumed) == full
    assert resumed.state_dict()["position"] == 0  # a finished pass starts the epoch again


def test_position_counts_samples_handed_to_a_dataloader():
    sampler = ShardedSampler(30, 0, 1, seed=0)
    loader = DataLoader(list(range(30)), batch_size=4, sampler=sampler)
    batches = iter(loader)
    seen = [next(batches) for _ in range(3)]
    assert sampler.state_dict()["position"] == 12
    resumed = ShardedSampler(30, 0, 1, seed=0)
    resumed.load_state_dict({"epoch": 0, "position": 12})
    rest = list(DataLoader(list(range(30)), batch_size=4, sampler=resumed))
    assert sorted(torch.cat(seen + rest).tolist()) == list(range(30))


def test_set_epoch_keeps_a_loaded_position_for_the_same_epoch():
    sampler = ShardedSampler(20, 0, 1, seed=0)
    sampler.load_state_dict({"epoch": 2, "position": 5})
    sampler.set_epoch(2)
    assert sampler.position == 5
    sampler.set_epoch(3)
    assert sampler.position == 0


BAD_STATES = [
    ({"epoch": 0}, "'position' is None; expected an integer ≥ 0"),
    ({"epoch": -1, "position": 0}, "'epoch' is -1"),
    ({"epoch": 0, "position": 11}, "position 11 is past this rank's 10 items"),
    ({"epoch": 0, "position": 0, "world_size": 4}, "saved world_size=4 but this run has world_size=2"),
    ({"epoch": 0, "position": 0, "n_items": 99}, "saved n_items=99"),
]


@pytest.mark.parametrize("state,message", BAD_STATES)
def test_bad_state_is_one_clear_error(state, message):
    sampler = ShardedSampler(20, 0, 2, seed=0)
    with pytest.raises(DataError, match=message):
        sampler.load_state_dict(state)


@pytest.mark.parametrize(
    "n_items,rank,world_size,message",
    [
        (10, 2, 2, "sampler: rank 2 of world_size 2; expected world_size ≥ 1 and 0 ≤ rank < world_size"),
        (10, 0, 0, "sampler: rank 0 of world_size 0; expected world_size ≥ 1 and 0 ≤ rank < world_size"),
        (-1, 0, 1, "sampler: n_items is -1; expected ≥ 0"),
    ],
)
def test_bad_arguments_are_rejected(n_items, rank, world_size, message):
    with pytest.raises(DataError) as error:
        ShardedSampler(n_items, rank, world_size, seed=0)
    assert str(error.value) == message
