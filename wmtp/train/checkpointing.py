"""Training checkpoints: atomic, resumable, and each one a loadable standard model directory.

    <run_dir>/checkpoints/step_000100/   (keep last N)   best/   final/
        configs/params.json  safetensors/model.safetensors  tokenizer/  metadata.json   ← `load_model` works
        value_head.safetensors        (objectives with a value head)
        train_state.pt                optimizer, scheduler, step, epoch, sampler position, RNG of every
                                      rank, early stopping, best metric

Written by rank 0 into a temp dir, then renamed; weights and optimizer state are gathered to full
(unsharded) tensors first, so FSDP runs save and load the same files as single-process runs.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from wmtp.distributed import DistContext
from wmtp.errors import CheckpointError
from wmtp.model.checkpoint import populate_model_dir
from wmtp.model.tokenizer import Tokenizer

TRAIN_STATE = "train_state.pt"
VALUE_HEAD_FILE = "value_head.safetensors"
STEP_PREFIX = "step_"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_to_main(obj, ctx: DistContext) -> Optional[list]:
    if not ctx.is_distributed:
        return [obj]
    gathered = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def full_state(module, optimizer) -> tuple[dict, dict]:
    """Unsharded model and optimizer state dicts on CPU (complete on rank 0 under FSDP)."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(module, options=options), get_optimizer_state_dict(module, optimizer, options=options)


def save_checkpoint(
    name: str,
    run_dir: Path,
    module,
    optimizer,
    train_state: dict,
    ctx: DistContext,
    tokenizer: Tokenizer,
) -> Path:
    """Save `<run_dir>/checkpoints/<name>` atomically. Collective: call on every rank.

    Returns the path on every rank once rank 0 has written it (a barrier), so a rank may read what
    was saved right away (the verifiable stage loads the critic's final value head on every rank).
    """
    model_state, optim_state = full_state(module, optimizer)
    rng_states = gather_to_main(rng_state(), ctx)
    path = run_dir / "checkpoints" / name
    if ctx.is_main:
        write_checkpoint(name, run_dir, module, model_state, optim_state, rng_states, train_state, tokenizer)
    if ctx.is_distributed:
        dist.barrier()
    return path


def write_checkpoint(name, run_dir, module, model_state, optim_state, rng_states, train_state, tokenizer) -> Path:
    """Rank 0's part of `save_checkpoint`: a temp dir filled, then renamed into place."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    try:
        inner = getattr(module, "module", module)
        policy = {k.removeprefix("model."): v for k, v in model_state.items() if k.startswith("model.")}
        value_head = {k.removeprefix("value_head."): v for k, v in model_state.items() if k.startswith("value_head.")}
        populate_model_dir(tmp, inner.model.args, policy, source=f"wmtp training checkpoint {name}",
                           tokenizer_model=tokenizer.path, extra_metadata={"train_step": train_state["step"]})
        if value_head:
            save_file({k: v.contiguous() for k, v in value_head.items()}, tmp / VALUE_HEAD_FILE)
        torch.save({**train_state, "optimizer": optim_state, "rng": rng_states}, tmp / TRAIN_STATE)
        replace_dir(tmp, root / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root / name


def replace_dir(new: Path, dest: Path) -> None:
    """Put `new` at `dest`; an existing `dest` is moved aside first and removed after the swap."""
    if dest.exists():
        trash = dest.with_name(f".{dest.name}.old")
        shutil.rmtree(trash, ignore_errors=True)
        os.rename(dest, trash)
        os.rename(new, dest)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(new, dest)


def prune_step_checkpoints(run_dir: Path, keep_last: int) -> None:
    steps = sorted((run_dir / "checkpoints").glob(f"{STEP_PREFIX}*"))
    for old in steps[: max(0, len(steps) - keep_last)]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    """The checkpoint with the highest step (step_* or final), or None for a fresh run dir."""
    candidates = [p for p in (run_dir / "checkpoints").glob("*") if (p / TRAIN_STATE).is_file() and not p.name.startswith(".")]
    if not candidates:
        return None
    return max(candidates, key=lambda p: (read_train_state(p)["step"], p.name == "final"))


def read_train_state(ckpt: Path) -> dict:
    try:
        return torch.load(ckpt / TRAIN_STATE, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"{ckpt / TRAIN_STATE}: cannot be read ({exc})") from None


def load_checkpoint(ckpt: Path, module, optimizer, ctx: DistContext) -> dict:
    """Restore weights, optimizer and this rank's RNG from `ckpt`; return the train state. Collective."""
    from safetensors.torch import load_file

    from wmtp.model.checkpoint import WEIGHTS_FILE, read_safetensors

    state = read_train_state(ckpt)
    model_state = {f"model.{k}": v for k, v in read_safetensors(ckpt / WEIGHTS_FILE).items()}
    if (ckpt / VALUE_HEAD_FILE).is_file():
        model_state.update({f"value_head.{k}": v for k, v in load_file(ckpt / VALUE_HEAD_FILE).items()})
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(module, model_state, options=options)
    set_optimizer_state_dict(module, optimizer, state.pop("optimizer"), options=options)
    rng_states = state.pop("rng")
    if len(rng_states) != ctx.world_size:
        raise CheckpointError(
            f"{ckpt}: saved by {len(rng_states)} rank(s), resumed with {ctx.world_size}; resume needs the same world size"
        )
    set_rng_state(rng_states[ctx.rank])
    return state
