"""Process group, rank helpers, and parallelism applied from outside the model (DDP / FSDP2, AC).

Everything reads the environment torchrun (or the Kubeflow PyTorchJob operator) sets:
RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT. Never a home-made launcher.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

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
        raise DeviceError(
            f"train.device: mps runs one process, not {world_size}; set distributed.strategy: none "
            "(or train.device: cpu for several processes)"
        )
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


AC_MODES = ("none", "full", "selective")


def transformer_blocks(model: nn.Module) -> list[tuple[nn.ModuleList, int]]:
    """(container, index) of every transformer block: the trunk, head 1 and the extra heads."""
    return [(blocks, i) for blocks in (model.layers, model.extra_heads) for i in range(len(blocks))]


def selective_save_ops() -> set:
    """Ops whose outputs selective AC keeps: the matmuls and every SDPA kernel (torchtitan's op list)."""
    aten = torch.ops.aten
    names = (
        "mm",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_attention_math",
    )
    return {getattr(aten, name).default for name in names if hasattr(aten, name)}


def selective_checkpoint_context():
    """torch.utils.checkpoint `context_fn` of selective AC: keep the outputs of `selective_save_ops`
    except every second matmul (torchtitan's "op" mode: about half the matmul recompute saved of the
    memory kept), recompute everything else. The counts restart for each forward and its recompute,
    which see the same ops in the same order, so both make the same choices."""
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    save, mm = selective_save_ops(), torch.ops.aten.mm.default
    counts = {"forward": 0, "recompute": 0}

    def policy(ctx, op, *args, **kwargs):
        if op == mm:
            key = "recompute" if ctx.is_recompute else "forward"
            counts[key] += 1
            if counts[key] % 2 == 0:
                return CheckpointPolicy.PREFER_RECOMPUTE
        return CheckpointPolicy.MUST_SAVE if op in save else CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy)


def apply_activation_checkpointing(model: nn.Module, mode="full") -> None:
    """Wrap every transformer block (trunk and heads) to recompute its activations in backward:
    `full` keeps only each block's input, `selective` keeps what `selective_checkpoint_context` says.
    `mode` is one of AC_MODES (true / false: full / none)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    mode = {True: "full", False: "none"}.get(mode, mode) if isinstance(mode, bool) else mode
    if mode not in AC_MODES:
        raise ValueError(f"activation checkpointing: expected one of {', '.join(AC_MODES)} (got {mode!r})")
    if mode == "none":
        return
    extra = {"context_fn": selective_checkpoint_context} if mode == "selective" else {}
    for blocks, i in transformer_blocks(model):
        blocks[i] = checkpoint_wrapper(blocks[i], **extra)


def compile_blocks(model: nn.Module) -> None:
    """torch.compile each transformer block in place, as torchtitan does (one graph serves every block).

    Only `forward` is compiled, not the module call: FSDP2's all-gather / reshard hooks, registered on
    the block's module call by `fully_shard` afterwards, stay outside the graph (as with torchtitan's
    `torch.compile(block)` wrapper), and parameter names and state dicts are unchanged (no `_orig_mod`).
    An AC-wrapped block compiles its wrapper, so that inductor sees the checkpoint and applies the
    selective policy when partitioning forward from backward.
    """
    for blocks, i in transformer_blocks(model):
        block = blocks[i]
        block.forward = torch.compile(block.forward)


def fsdp_mixed_precision(param_dtype: Optional[torch.dtype]):
    """FSDP2's `MixedPrecisionPolicy` for `param_dtype` (None: no policy, parameters compute as stored).

    Parameters are all-gathered and computed on in `param_dtype`; gradients are reduce-scattered and
    the sharded (master) parameters kept in fp32. Inputs are not cast (`cast_forward_inputs=False`):
    a block's activations arrive in bf16 anyway, and the RoPE tables and the batch's float tensors
    (token weights, normalisers) must stay fp32."""
    if param_dtype is None:
        return None
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)


def parallelize(
    module: nn.Module,
    strategy: str,
    ctx: DistContext,
    activation_checkpointing="none",
    compile: bool = False,
    fsdp_param_dtype: Optional[torch.dtype] = None,
) -> nn.Module:
    """Wrap the train module for `strategy` (none | ddp | fsdp) in torchtitan's order: activation
    checkpointing (`AC_MODES`), then per-block compilation, then sharding (FSDP2 with mixed precision
    in `fsdp_param_dtype`, see `fsdp_mixed_precision`) or DDP."""
    apply_activation_checkpointing(module.model, activation_checkpointing)
    if compile:
        compile_blocks(module.model)
    if strategy == "none" or not ctx.is_distributed:
        return module
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)
    if strategy == "fsdp":
        return shard_fsdp2(module, fsdp_mixed_precision(fsdp_param_dtype))
    raise ValueError(f"unknown distributed strategy {strategy!r}")


def shard_fsdp2(module: nn.Module, mp_policy=None) -> nn.Module:
    """FSDP2: one `fully_shard` per trunk block, the heads + shared norm + output as one group, then root.

    The head group stays unsharded between its forward calls (reshard_after_forward=False) because
    every head re-enters it (norm and output are shared) within one step. `mp_policy`: every group's
    `MixedPrecisionPolicy` (None: FSDP2's default, compute in the stored dtype).
    """
    from torch.distributed.fsdp import fully_shard

    kwargs = {"mp_policy": mp_policy} if mp_policy is not None else {}
    model = module.model
    for block in model.layers[:-1]:
        fully_shard(block, **kwargs)
    fully_shard([*model.heads, model.norm, model.output], reshard_after_forward=False, **kwargs)
    fully_shard(module, **kwargs)
    return module


def unwrap(module: nn.Module) -> nn.Module:
    """The TrainModule inside a DDP wrapper (FSDP2 shards in place, so it is already the module)."""
    return getattr(module, "module", module)
