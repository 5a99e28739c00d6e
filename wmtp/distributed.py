"""Process group, rank helpers, and parallelism applied from outside the model (DDP / FSDP2, AC).

Everything reads the environment torchrun (or the Kubeflow PyTorchJob operator) sets:
RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT. Never a home-made launcher.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from wmtp.device import DeviceError, resolve_device


@dataclass
class DistContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(backend: str = "auto", device: str = "auto") -> DistContext:
    """Pick the device (`train.device`: cuda:LOCAL_RANK, mps or cpu; see wmtp.device) and join the
    process group when torchrun started several processes. One process never makes a process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device_type = resolve_device(device)
    if device_type == "mps" and world_size > 1:
        # Neither NCCL nor gloo moves MPS tensors: an Apple GPU trains as one process.
        raise DeviceError(f"train.device: mps runs one process, not {world_size}; set distributed.strategy: none "
                          "(or train.device: cpu for several processes)")
    if device_type == "cuda":
        ctx_device = torch.device("cuda", local_rank)
        torch.cuda.set_device(ctx_device)
    else:
        ctx_device = torch.device(device_type)
    if world_size > 1 and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return DistContext(rank=rank, local_rank=local_rank, world_size=world_size, device=ctx_device)


def destroy_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Mean over ranks (identity with one process)."""
    if ctx.is_distributed:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= ctx.world_size
    return values


def all_reduce_any(flag: bool, ctx: DistContext, device) -> bool:
    """True on every rank if it is True on any rank: every rank reaches the same decision."""
    if not ctx.is_distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_object(obj, ctx: DistContext):
    if not ctx.is_distributed:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Checkpoint every transformer block (trunk and heads): recompute activations in backward."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for blocks in (model.layers, model.extra_heads):
        for i, block in enumerate(blocks):
            blocks[i] = checkpoint_wrapper(block)


def parallelize(module: nn.Module, strategy: str, ctx: DistContext, activation_checkpointing: bool = False) -> nn.Module:
    """Wrap the train module for `strategy` (none | ddp | fsdp); AC first, then sharding (torchtitan order)."""
    if activation_checkpointing:
        apply_activation_checkpointing(module.model)
    if strategy == "none" or not ctx.is_distributed:
        return module
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)
    if strategy == "fsdp":
        return shard_fsdp2(module)
    raise ValueError(f"unknown distributed strategy {strategy!r}")


def shard_fsdp2(module: nn.Module) -> nn.Module:
    """FSDP2: one `fully_shard` per trunk block, the heads + shared norm + output as one group, then root.

    The head group stays unsharded between its forward calls (reshard_after_forward=False) because
    every head re-enters it (norm and output are shared) within one step.
    """
    from torch.distributed.fsdp import fully_shard

    model = module.model
    for block in model.layers[:-1]:
        fully_shard(block)
    fully_shard([*model.heads, model.norm, model.output], reshard_after_forward=False)
    fully_shard(module)
    return module


def unwrap(module: nn.Module) -> nn.Module:
    """The TrainModule inside a DDP wrapper (FSDP2 shards in place, so it is already the module)."""
    return getattr(module, "module", module)
