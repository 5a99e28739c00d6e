"""A distributed sampler over positions 0..n-1 whose place in the epoch is part of the training state.

Each epoch has one order (a permutation seeded by `(seed, epoch)`, or 0..n-1 when `shuffle=False`,
or `order(epoch)` when the sampler is given one: n positions in 0..n-1, which may repeat some, such as
a curriculum's order over the stage's optimizer steps, `wmtp.data.sampling.CurriculumOrder`).
That order is cut to a multiple of `world_size`:

- `drop_last=False`: the order is padded by repeating its first items, so at most `world_size − 1`
  items are seen twice in an epoch and every item at least once;
- `drop_last=True`: the last `n mod world_size` items of the order are left out of this epoch
  (a different few each epoch when shuffling).

Rank `r` takes positions `r, r + world_size, r + 2·world_size, …` of that order, so the shards are
disjoint and, for an ordered draw such as a curriculum, every rank moves through training progress
at the same pace.

Position = the number of items this sampler has yielded on this rank in the current epoch.
`state_dict()` returns `{epoch, position, …}`; `load_state_dict` makes the next iteration resume at that
position of the same order. With a single-process DataLoader, after k batches of size B the
position is k·B; DataLoader workers prefetch indices ahead of the training loop, so a trainer using
workers should record `consumed batches × batch size` itself (as `wmtp.train` does) and pass that.
An iteration that runs to the end resets the position to 0 (iterating again repeats the epoch;
call `set_epoch(e + 1)` for the next one).
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional

import numpy as np
from torch.utils.data import Sampler

from wmtp.data.schema import DataError


class ShardedSampler(Sampler[int]):
    """Disjoint per-rank shards of positions 0..n_items-1, reshuffled per epoch, resumable mid-epoch."""

    def __init__(
        self,
        n_items: int,
        rank: int,
        world_size: int,
        seed: int,
        shuffle: bool = True,
        drop_last: bool = False,
        order: Optional[Callable[[int], np.ndarray]] = None,
    ):
        if n_items < 0:
            raise DataError(f"sampler: n_items is {n_items}; expected ≥ 0")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(
                f"sampler: rank {rank} of world_size {world_size}; expected world_size ≥ 1 and 0 ≤ rank < world_size"
            )
        self.n_items = n_items
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.order = order  # epoch → its order of positions (replaces the shuffle / identity order)
        self.epoch = 0
        self.position = 0

    def __len__(self) -> int:
        """Items per epoch on this rank (the whole epoch, whatever the current position)."""
        if self.drop_last:
            return self.n_items // self.world_size
        return -(-self.n_items // self.world_size)

    def epoch_order(self) -> np.ndarray:
        """This rank's items for the current epoch, in order."""
        if self.order is not None:
            order = np.asarray(self.order(self.epoch), dtype=np.int64)
            if len(order) != self.n_items:
                raise DataError(
                    f"sampler: the order of epoch {self.epoch} has {len(order)} positions; "
                    f"expected n_items = {self.n_items}"
                )
        elif self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n_items)
        else:
            order = np.arange(self.n_items)
        total = len(self) * self.world_size
        if total > len(order) and len(order) > 0:
            order = np.resize(order, total)  # repeats the first items: the documented padding
        return order[:total][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        shard = self.epoch_order()
        while self.position < len(shard):
            item = int(shard[self.position])
            self.position += 1
            yield item
        self.position = 0

    def set_epoch(self, epoch: int) -> None:
        """Select epoch `epoch`'s order; a change of epoch restarts at position 0."""
        if epoch != self.epoch:
            self.position = 0
        self.epoch = epoch

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "n_items": self.n_items,
            "world_size": self.world_size,
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume at `state["position"]` of epoch `state["epoch"]` (other keys are checked when present)."""
        for key in ("epoch", "position"):
            if not isinstance(state.get(key), int) or state[key] < 0:
                raise DataError(f"sampler state: '{key}' is {state.get(key)!r}; expected an integer ≥ 0")
        for key in ("n_items", "world_size", "seed"):
            if key in state and state[key] != getattr(self, key):
                raise DataError(
                    f"sampler state: saved {key}={state[key]} but this run has {key}={getattr(self, key)}; "
                    f"the data or the number of ranks changed, so the saved position means nothing here"
                )
        if state["position"] > len(self):
            raise DataError(
                f"sampler state: position {state['position']} is past this rank's {len(self)} items per epoch"
            )
        self.epoch = state["epoch"]
        self.position = state["position"]
