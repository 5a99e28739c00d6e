"""Where a run computes and in which precision: the CUDA / MPS / CPU decisions, in one place.

`train.device` (and `wmtp eval … --device`) is `auto | cuda | mps | cpu`; `auto` is cuda when available,
else mps (an Apple-silicon GPU), else cpu. Training, end-of-stage evaluation and `wmtp eval` all resolve
it here (`resolve_device`). `model.dtype` then sets the master weights and the autocast (`precision`):

    model.dtype   cuda                            mps                             cpu
    auto          fp32 weights, bf16 autocast     fp32, no autocast               fp32, no autocast
                  (FSDP: bf16 mixed precision)
    float32       fp32                            fp32                            fp32
    float16       fp32 weights, fp16 autocast, dynamic loss scaling (all three devices)
    bfloat16      bf16 weights                    refused                         bf16 weights

FSDP mixed precision (`auto` on CUDA when FSDP2 shards over several processes) is FSDP2's own
`MixedPrecisionPolicy`, as torchtitan trains: the shards, the optimizer's master weights and the
checkpoints stay fp32; each all-gather casts the block's parameters to bf16, so forward and backward
run on bf16 parameters and activations with no autocast, and gradients are reduce-scattered in fp32
(the all-gathers move half the bytes of fp32 ones). DDP and one process keep fp32 weights under bf16
autocast. RMSNorm statistics, RoPE and the loss stay in fp32 either way (the model casts for them).

MPS gets no bfloat16 (whether it works depends on the macOS version and the chip): its reduced
precision is float16, with loss scaling so that small gradients do not underflow. Ops MPS lacks run on
the CPU: `wmtp` sets PYTORCH_ENABLE_MPS_FALLBACK=1 on macOS when it is imported (`wmtp/__init__.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from wmtp.errors import WmtpError

DEVICES = ("auto", "cuda", "mps", "cpu")


class DeviceError(WmtpError):
    """The requested device is not on this machine, or cannot run the requested precision."""


def mps_available() -> bool:
    """An Apple-silicon GPU usable by this torch build (False on builds without MPS)."""
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """The device types this machine can run, best first."""
    found = ["cuda"] if torch.cuda.is_available() else []
    return found + (["mps"] if mps_available() else []) + ["cpu"]


def resolve_device(requested: str = "auto") -> str:
    """`auto` → the best available device type; an explicit one must be available (else DeviceError)."""
    if requested not in DEVICES:
        raise DeviceError(f"train.device: expected one of {', '.join(DEVICES)} (got {requested!r})")
    available = available_devices()
    if requested == "auto":
        return available[0]
    if requested not in available:
        raise DeviceError(
            f"train.device: {requested} is not available on this machine (available: "
            f"{', '.join(available)}); use auto or one of them"
        )
    return requested


@dataclass(frozen=True)
class Precision:
    """How a stage holds and computes its numbers on one device type."""

    weights: torch.dtype  # the parameters (and so the optimizer's master copy)
    autocast: Optional[torch.dtype] = None  # forward passes run under torch.autocast in this dtype
    loss_scaling: bool = False  # a GradScaler scales the loss (float16: tiny gradients would underflow)
    # FSDP2 MixedPrecisionPolicy(param_dtype=this, reduce_dtype=float32): the sharded fp32 parameters
    # are all-gathered in this dtype and computed on directly (autocast is then None).
    fsdp_param_dtype: Optional[torch.dtype] = None


def precision(dtype: str, device_type: str, fsdp: bool = False) -> Precision:
    """`model.dtype` on `device_type` (see the module's table); a pair MPS cannot run is a DeviceError.

    `fsdp`: the stage is sharded by FSDP2 over several processes (distributed.strategy fsdp, > 1 rank).
    """
    if dtype == "auto":
        if device_type != "cuda":  # MPS and CPU compute in fp32
            return Precision(torch.float32)
        # bf16 where the hardware has it natively: FSDP2's mixed precision under FSDP, else autocast.
        if fsdp:
            return Precision(torch.float32, fsdp_param_dtype=torch.bfloat16)
        return Precision(torch.float32, torch.bfloat16)
    if dtype == "float32":
        return Precision(torch.float32)
    if dtype == "float16":
        return Precision(torch.float32, torch.float16, loss_scaling=True)
    if dtype == "bfloat16":
        if device_type == "mps":
            raise DeviceError("model.dtype: bfloat16 is not supported on mps; use float32 (or auto) or float16")
        return Precision(torch.bfloat16)
    raise DeviceError(f"model.dtype: expected auto, float32, float16 or bfloat16 (got {dtype!r})")


def eval_dtype(device: str) -> str:
    """The dtype `wmtp eval` loads a model in by default: bf16 on CUDA, fp32 on MPS and CPU."""
    return "bfloat16" if device.startswith("cuda") else "float32"
