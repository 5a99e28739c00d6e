"""From a stage spec to per-rank DataLoaders over the sampled rows (index → rows → lines → batches)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from wmtp.data.collate import MTPCollator
from wmtp.data.dataset import JsonlSamples
from wmtp.data.index import DatasetIndex
from wmtp.data.sampler import ShardedSampler
from wmtp.data.sampling import CurriculumOrder, SamplingSpec, draw_indices
from wmtp.distributed import DistContext
from wmtp.train.config import StageSpec
from wmtp.train.sections import TrainSection


def ignore_preemption_signal(_worker_id: int) -> None:
    """DataLoader worker init: leave SIGTERM to the training process.

    torchrun delivers SIGTERM to each worker's whole process group, DataLoader workers included; a worker
    killed by it makes the training process raise "DataLoader worker … is killed by signal" instead of
    saving. Ignored here, the workers keep serving until the trainer saves and shuts them down."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@dataclass
class TrainData:
    loader: DataLoader
    sampler: ShardedSampler
    n_rows: int  # sampled rows (all ranks)
    micro_batches_per_epoch: int  # per rank, a multiple of grad_accum_steps
    total_steps: int  # optimizer steps of the stage: min(max_steps, num_epochs × steps per epoch)


@dataclass
class TrainSampling:
    sampler: ShardedSampler
    micro_batches_per_epoch: int
    total_steps: int


def build_train_sampler(
    index: DatasetIndex, rows: np.ndarray, sampling: SamplingSpec, train: TrainSection, ctx: DistContext
) -> TrainSampling:
    """This rank's sampler over the drawn `rows`, and the stage's length in micro-batches and optimizer steps.

    A curriculum's windows are fractions of the stage's optimizer steps over all epochs, so its order
    (`CurriculumOrder`) is made from the stage's length; other strategies reshuffle every epoch."""
    micro = (len(rows) // ctx.world_size // train.batch_size) // train.grad_accum_steps * train.grad_accum_steps
    steps_per_epoch = micro // train.grad_accum_steps
    total_steps = steps_per_epoch * train.num_epochs
    if train.max_steps is not None:
        total_steps = min(total_steps, train.max_steps)
    order = None
    if sampling.strategy == "curriculum":
        order = CurriculumOrder(
            index,
            rows,
            sampling,
            total_steps=total_steps,
            steps_per_epoch=steps_per_epoch,
            rows_per_step=ctx.world_size * train.batch_size * train.grad_accum_steps,
            seed=train.seed,
        )
    sampler = ShardedSampler(
        len(rows), ctx.rank, ctx.world_size, seed=train.seed, shuffle=order is None, drop_last=True, order=order
    )
    return TrainSampling(sampler, micro, total_steps)


def build_train_data(spec: StageSpec, tokenizer, n_heads: int, ctx: DistContext) -> TrainData:
    index = DatasetIndex.load(spec.data.train_file)
    rows = draw_indices(index, spec.data.sampling, seed=spec.train.seed)
    sampling = build_train_sampler(index, rows, spec.data.sampling, spec.train, ctx)
    sampler = sampling.sampler
    loader = DataLoader(
        JsonlSamples(spec.data.train_file, rows),
        batch_size=spec.train.batch_size,
        sampler=sampler,
        collate_fn=MTPCollator(tokenizer, n_heads, spec.data.max_length),
        num_workers=spec.data.num_workers,
        worker_init_fn=ignore_preemption_signal if spec.data.num_workers > 0 else None,
        drop_last=True,
    )
    return TrainData(
        loader=loader,
        sampler=sampler,
        n_rows=len(rows),
        micro_batches_per_epoch=sampling.micro_batches_per_epoch,
        total_steps=sampling.total_steps,
    )


def build_valid_loader(spec: StageSpec, tokenizer, n_heads: int, ctx: DistContext) -> DataLoader | None:
    """The first `valid_samples` rows of the validation split, the same rows every time, split by rank."""
    if not spec.data.valid_file:
        return None
    index = DatasetIndex.load(spec.data.valid_file)
    n = len(index) if spec.data.valid_samples is None else min(len(index), spec.data.valid_samples)
    n -= n % (ctx.world_size * spec.train.batch_size)  # every rank runs the same number of batches
    if n == 0:
        return None
    rows = np.arange(n)[ctx.rank :: ctx.world_size]
    return DataLoader(
        JsonlSamples(spec.data.valid_file, rows),
        batch_size=spec.train.batch_size,
        shuffle=False,
        collate_fn=MTPCollator(tokenizer, n_heads, spec.data.max_length),
    )


def move_batch(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
