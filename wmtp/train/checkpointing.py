"""Training checkpoints: atomic, resumable, each one a loadable standard model directory, data only.

    <run_dir>/checkpoints/step_000100/   (keep last N)   best/   final/
        configs/params.json  safetensors/model.safetensors  tokenizer/  metadata.json   ← `load_model` works
        value_head.safetensors        (objectives with a value head)
        optimizer.safetensors         optimizer state tensors, `state.<param FQN>.<name>` (exp_avg, …)
        rng.safetensors               torch (and CUDA) RNG states, `rank<r>.torch`, `rank<r>.cuda.<device>`
        train_state.json              step, epoch, sampler position, scheduler, early stopping, best metric,
                                      optimizer hyperparameters, numpy / Python RNG states of every rank;
                                      written last: a dir without it is not a checkpoint

Nothing in a checkpoint is ever unpickled: a run dir pulled from elsewhere is untrusted input, and a
pickle runs code when it is loaded. Tensors are safetensors, the rest JSON; a `train_state.pt` (the
pickle older versions wrote) is refused with one line.

Written by rank 0 into a temp dir (`.<name>.<random>`), then renamed; weights and optimizer state are
gathered to full (unsharded) tensors first, so FSDP runs save and load the same files as
single-process runs. A kill during a save leaves only hidden dirs, which the next start removes
(`remove_partial_checkpoints`).
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from wmtp.common.files import atomic_dir
from wmtp.distributed import DistContext, broadcast_object, unwrap
from wmtp.errors import CheckpointError
from wmtp.model.checkpoint import populate_model_dir
from wmtp.model.tokenizer import Tokenizer
from wmtp.train.objectives.base import VALUE_HEAD_FILE  # the value head of a stage that trains one

TRAIN_STATE = "train_state.json"  # written last: its presence marks a complete checkpoint
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
LEGACY_TRAIN_STATE = "train_state.pt"  # a pickle: refused, never loaded
STEP_PREFIX = "step_"
FORMAT = "wmtp-train-state-v1"
# What `write_checkpoint` leaves behind when killed: its temp dir `.<name>.<mkdtemp suffix>` and the
# previous checkpoint moved aside by `wmtp.common.files.replace_dir`, `.<name>.old`.
PARTIAL_DIR = re.compile(rf"\.({STEP_PREFIX}\d+|best|final)\.(\w+)")
MAX_KEYS_SHOWN = 4


# ---------------------------------------------------------------------------------------------- RNG


def rng_state() -> dict:
    """This process's RNG states (torch, CUDA, numpy's legacy global generator, Python's `random`)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` returned (CUDA states only where CUDA is available)."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_to_files(rng_states: list[dict]) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Every rank's RNG state as (tensors for rng.safetensors, JSON-safe numpy / Python states)."""
    tensors, rest = {}, []
    for rank, state in enumerate(rng_states):
        tensors[f"rank{rank}.torch"] = state["torch"]
        for device, cuda in enumerate(state.get("cuda", [])):
            tensors[f"rank{rank}.cuda.{device}"] = cuda
        name, key, pos, has_gauss, cached_gaussian = state["numpy"]
        version, internal, gauss_next = state["python"]
        rest.append(
            {
                "numpy": {
                    "bit_generator": name,
                    "key": key.tolist(),
                    "pos": int(pos),
                    "has_gauss": int(has_gauss),
                    "cached_gaussian": float(cached_gaussian),
                },
                "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
                "cuda_devices": len(state.get("cuda", [])),
            }
        )
    return tensors, rest


def rng_from_files(tensors: dict[str, torch.Tensor], saved: dict, rank: int) -> dict:
    """Rank `rank`'s state in `rng_state`'s form, from rng.safetensors and train_state.json's `rng`."""
    n, p = saved["numpy"], saved["python"]
    return {
        "torch": tensors[f"rank{rank}.torch"],
        "cuda": [tensors[f"rank{rank}.cuda.{d}"] for d in range(saved.get("cuda_devices", 0))],
        "numpy": (
            n["bit_generator"],
            np.asarray(n["key"], dtype=np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        ),
        "python": (p["version"], tuple(p["internal"]), p["gauss_next"]),
    }


def gather_to_main(obj, ctx: DistContext) -> Optional[list]:
    """`[obj of rank 0, obj of rank 1, …]` on rank 0, None elsewhere (in-process objects, not files)."""
    if not ctx.is_distributed:
        return [obj]
    gathered = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


# ------------------------------------------------------------------------------------- optimizer


def optimizer_to_files(optim_state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """A full (FQN-keyed) optimizer state dict as (tensors for optimizer.safetensors, JSON part).

    `get_optimizer_state_dict(full_state_dict=True)` keys `state` by parameter FQN
    (`model.layers.0.attention.wq.weight`) and lists FQNs in each param group's `params`; tensors
    become `state.<FQN>.<name>` (a state name has no dot, so the key splits at its last one), anything
    else in a parameter's state goes to JSON next to the param groups (lists for tuples such as betas).
    """
    tensors, scalars = {}, {}
    for fqn, entries in optim_state.get("state", {}).items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{fqn}.{name}"] = value
            else:
                scalars.setdefault(fqn, {})[name] = value
    return tensors, {"param_groups": optim_state.get("param_groups", []), "scalars": scalars}


def optimizer_from_files(tensors: dict[str, torch.Tensor], saved: dict, optimizer) -> dict:
    """The state dict `set_optimizer_state_dict` takes, from `optimizer_to_files`' two parts.

    JSON has no tuples: a hyperparameter that is a tuple in the live optimizer (betas) is made one
    again, so the restored param groups are what the uninterrupted run had."""
    state: dict[str, dict] = {}
    for key, value in tensors.items():
        if not key.startswith("state.") or "." not in key[len("state.") :]:
            raise ValueError(f"unexpected tensor {key!r} (expected state.<parameter>.<name>)")
        fqn, name = key[len("state.") :].rsplit(".", 1)
        state.setdefault(fqn, {})[name] = value
    for fqn, entries in saved.get("scalars", {}).items():
        state.setdefault(fqn, {}).update(entries)
    live_groups = optimizer.param_groups
    groups = []
    for i, group in enumerate(saved["param_groups"]):
        live = live_groups[i] if i < len(live_groups) else {}
        groups.append(
            {k: tuple(v) if isinstance(v, list) and isinstance(live.get(k), tuple) else v for k, v in group.items()}
        )
    return {"state": state, "param_groups": groups}


# ------------------------------------------------------------------------------------------ save


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

    Returns the path on every rank once rank 0 has written it, so a rank may read what was saved
    right away (the verifiable stage loads the critic's final value head on every rank). When rank 0
    cannot write it (a full disk), every rank raises the same `CheckpointError` rather than the other
    ranks waiting for rank 0 until the collective times out.
    """
    model_state, optim_state = full_state(module, optimizer)
    rng_states = gather_to_main(rng_state(), ctx)
    path = run_dir / "checkpoints" / name
    failure = None
    if ctx.is_main:
        try:
            write_checkpoint(name, run_dir, module, model_state, optim_state, rng_states, train_state, tokenizer)
        except Exception as exc:
            if not ctx.is_distributed:
                raise
            failure = exc
    if ctx.is_distributed:
        # Doubles as the barrier: the other ranks wait here until rank 0 has written (or failed).
        message = broadcast_object(None if failure is None else str(failure), ctx)
        if failure is not None:
            raise failure
        if message is not None:
            raise CheckpointError(f"rank 0 could not save {path}: {message}")
    return path


def write_checkpoint(name, run_dir, module, model_state, optim_state, rng_states, train_state, tokenizer) -> Path:
    """Rank 0's part of `save_checkpoint`: a temp dir filled, then renamed into place.

    A full disk is one `CheckpointError` naming the run dir, the space the checkpoint needs and the
    space free, with the temp dir removed and the previous checkpoints untouched.
    """
    root = run_dir / "checkpoints"
    inner = getattr(module, "module", module)
    policy = {k.removeprefix("model."): v for k, v in model_state.items() if k.startswith("model.")}
    value_head = {k.removeprefix("value_head."): v for k, v in model_state.items() if k.startswith("value_head.")}
    optim_tensors, optim_json = optimizer_to_files(optim_state)
    rng_tensors, rng_json = rng_to_files(rng_states)
    try:
        with atomic_dir(root / name, replace=True) as tmp:  # on failure, removed before the space is measured
            populate_model_dir(
                tmp,
                inner.model.args,
                policy,
                source=f"wmtp training checkpoint {name}",
                tokenizer_model=tokenizer.path,
                extra_metadata={"train_step": train_state["step"]},
            )
            if value_head:
                write_tensors(value_head, tmp / VALUE_HEAD_FILE)
            write_tensors(optim_tensors, tmp / OPTIMIZER_FILE)
            write_tensors(rng_tensors, tmp / RNG_FILE)
            document = {**train_state, "format": FORMAT, "optimizer": optim_json, "rng": rng_json}
            (tmp / TRAIN_STATE).write_text(json.dumps(document, indent=1) + "\n")
    except Exception as exc:
        if is_disk_full(exc):
            tensors = [*model_state.values(), *optim_tensors.values(), *rng_tensors.values()]
            needed = sum(t.numel() * t.element_size() for t in tensors)
            needed += os.path.getsize(tokenizer.path) if tokenizer.path else 0
            free = shutil.disk_usage(root if root.is_dir() else run_dir).free  # measured after the cleanup
            raise CheckpointError(
                f"{run_dir}: no space left on the device for checkpoint {name} (needs about {human_bytes(needed)}, "
                f"{human_bytes(free)} free); the previous checkpoints are intact: free some space and rerun "
                f"the same command to resume"
            ) from None
        raise
    return root / name


def write_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors file of `tensors` (made contiguous, as safetensors requires)."""
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, path, metadata={"format": "pt"})


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC / EDQUOT from Python's own writes, or as safetensors reports it: its Rust writer raises a
    `SafetensorError` ("… No space left on device (os error 28)"), not an OSError."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return type(exc).__name__ == "SafetensorError" and (
        f"os error {errno.ENOSPC})" in str(exc) or f"os error {errno.EDQUOT})" in str(exc)
    )


def human_bytes(n: float) -> str:
    """1536 → "1.5 KiB"."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def prune_step_checkpoints(run_dir: Path, keep_last: int) -> None:
    """Remove all but the last `keep_last` step checkpoints."""
    steps = sorted((run_dir / "checkpoints").glob(f"{STEP_PREFIX}*"))
    for old in steps[: max(0, len(steps) - keep_last)]:
        shutil.rmtree(old, ignore_errors=True)


def remove_partial_checkpoints(run_dir: Path, ctx: DistContext) -> list[str]:
    """Clear what a kill during `write_checkpoint` left in `<run_dir>/checkpoints`. Collective.

    Rank 0 removes the temp dirs `.<name>.<random>`; a `.<name>.old` (the previous checkpoint, moved
    aside) is removed when `<name>` exists and moved back otherwise — the kill came between the two
    renames, and it is then the only copy. Returns what was done, one line each (rank 0; [] elsewhere).
    The barrier keeps the other ranks from choosing a checkpoint before rank 0 is done.
    """
    done = []
    root = run_dir / "checkpoints"
    if ctx.is_main and root.is_dir():
        for path in sorted(root.iterdir()):
            match = PARTIAL_DIR.fullmatch(path.name)
            if not match or not path.is_dir():
                continue
            name, suffix = match.groups()
            if suffix == "old" and not (root / name).exists():
                os.rename(path, root / name)
                done.append(f"restored {root / name} from {path.name} (a save was interrupted while replacing it)")
            else:
                shutil.rmtree(path)
                done.append(f"removed {path} (half-written by an interrupted save)")
    if ctx.is_distributed:
        dist.barrier()
    return done


# ------------------------------------------------------------------------------------------ load


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    """The checkpoint with the highest step (step_* or final), or None for a fresh run dir.

    A checkpoint written by an older version (a `train_state.pt` pickle) is refused, never loaded."""
    root = run_dir / "checkpoints"
    dirs = sorted(p for p in root.glob("*") if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    for p in dirs:
        if (p / LEGACY_TRAIN_STATE).exists():
            raise CheckpointError(
                f"{p / LEGACY_TRAIN_STATE}: written by an older wmtp that stored the train state as a pickle, "
                f"which is never loaded (unpickling runs code); start a fresh run dir (another --run-dir), "
                f"or remove {p} to resume from another checkpoint"
            )
    candidates = [p for p in dirs if (p / TRAIN_STATE).is_file()]
    if not candidates:
        return None
    return max(candidates, key=lambda p: (read_train_state(p)["step"], p.name == "final"))


def non_negative_int(value) -> bool:
    """An int ≥ 0 that is not a bool (JSON true is not a step count)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_scheduler_state(value) -> bool:
    # LambdaLR.load_state_dict copies every key into the scheduler and each non-null lr_lambdas entry
    # into a function's attributes: only plain data with null functions is accepted.
    lambdas = value.get("lr_lambdas", []) if isinstance(value, dict) else None
    return (
        isinstance(value, dict)
        and non_negative_int(value.get("last_epoch"))
        and "optimizer" not in value
        and isinstance(lambdas, list)
        and all(f is None for f in lambdas)
    )


def is_early_stopping_state(value) -> bool:
    return isinstance(value, dict) and is_number(value.get("best")) and isinstance(value.get("grad_norms", []), list)


def is_optimizer_json(value) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("param_groups"), list)
        and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in value["param_groups"])
        and isinstance(value.get("scalars", {}), dict)
        and all(isinstance(v, dict) for v in value.get("scalars", {}).values())
    )


def is_rng_list(value) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(
            isinstance(r, dict)
            and isinstance(r.get("numpy"), dict)
            and isinstance(r.get("python"), dict)
            and non_negative_int(r.get("cuda_devices", 0))
            for r in value
        )
    )


# Top-level keys of train_state.json, with what each must be (checked before anything is restored).
STATE_SCHEMA = {
    "step": ("an integer ≥ 0", non_negative_int),
    "epoch": ("an integer ≥ 0", non_negative_int),
    "micro_in_epoch": ("an integer ≥ 0", non_negative_int),
    "best_val": ("a number", is_number),
    "scheduler": ("an object with an integer last_epoch and null lr_lambdas", is_scheduler_state),
    "early_stopping": ("an object with a number best", is_early_stopping_state),
    "optimizer": ("an object with a list of param_groups", is_optimizer_json),
    "rng": ("a non-empty list of per-rank objects with numpy and python states", is_rng_list),
}


def read_train_state(ckpt: Path) -> dict:
    """train_state.json of checkpoint `ckpt`, checked key by key (plain JSON: nothing in it runs)."""
    path = ckpt / TRAIN_STATE
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: cannot be read as JSON ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: format {found!r}; expected a {FORMAT!r} train state")
    for key, (expected, ok) in STATE_SCHEMA.items():
        if key not in state:
            raise CheckpointError(f"{path}: '{key}' is missing; expected {expected}")
        if not ok(state[key]):
            raise CheckpointError(f"{path}: '{key}' is {short(state[key])}; expected {expected}")
    return state


def short(value) -> str:
    """A JSON value as written, cut to fit an error line."""
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "…"


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file of the checkpoint, or one `CheckpointError` naming it."""
    if not path.is_file():
        raise CheckpointError(f"{path}: not found (an incomplete checkpoint)")
    try:
        return load_file(path)
    except Exception as exc:  # SafetensorError, OSError, …: whatever the bytes are, one line
        raise CheckpointError(f"{path}: cannot be read as safetensors ({exc})") from None


def check_model_keys(ckpt: Path, saved: dict[str, torch.Tensor], module) -> None:
    """One line naming the keys that differ when `ckpt` was saved from another model than `module`
    (another size, another number of heads), instead of the loader's page-long RuntimeError."""
    # state_dict() of the unwrapped module: clean FQNs (the checkpoint wrapper strips its prefix) and,
    # under FSDP2, DTensors whose shape is the global one — the shape the checkpoint holds.
    expected = {k: tuple(v.shape) for k, v in unwrap(module).state_dict().items()}
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    shapes = [
        f"{k} {tuple(saved[k].shape)} vs {expected[k]}"
        for k in expected
        if k in saved and tuple(saved[k].shape) != expected[k]
    ]
    found = (
        ("missing from the checkpoint", missing),
        ("not in this model", unexpected),
        ("shape saved vs this model's", shapes),
    )
    parts = [f"{label}: {listing(keys)}" for label, keys in found if keys]
    if parts:
        raise CheckpointError(f"{ckpt}: saved from another model than this run's (model.path?): {'; '.join(parts)}")


def listing(keys: list[str]) -> str:
    """The first few keys, then how many more: the line stays one line for a model of another size."""
    shown = ", ".join(keys[:MAX_KEYS_SHOWN])
    return shown + (f" and {len(keys) - MAX_KEYS_SHOWN} more" if len(keys) > MAX_KEYS_SHOWN else "")


def first_line(exc: BaseException) -> str:
    """`Type: first line` of an exception from torch, whose messages can run to dozens of lines."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def load_checkpoint(ckpt: Path, module, optimizer, ctx: DistContext) -> dict:
    """Restore weights, optimizer and this rank's RNG from `ckpt`; return the train state. Collective.

    Every file is read and checked before anything is restored; a file that is not what this run
    wrote is one `CheckpointError` naming it."""
    from wmtp.model.checkpoint import WEIGHTS_FILE, read_safetensors

    state = read_train_state(ckpt)
    rng_saved = state.pop("rng")
    if len(rng_saved) != ctx.world_size:
        raise CheckpointError(
            f"{ckpt}: saved by {len(rng_saved)} rank(s), resumed with {ctx.world_size}; "
            f"resume needs the same world size"
        )
    model_state = {f"model.{k}": v for k, v in read_safetensors(ckpt / WEIGHTS_FILE).items()}
    if (ckpt / VALUE_HEAD_FILE).is_file():
        model_state.update({f"value_head.{k}": v for k, v in read_tensors(ckpt / VALUE_HEAD_FILE).items()})
    check_model_keys(ckpt, model_state, module)
    try:
        optim_state = optimizer_from_files(read_tensors(ckpt / OPTIMIZER_FILE), state.pop("optimizer"), optimizer)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{ckpt / OPTIMIZER_FILE}: {exc}") from None
    rng_tensors = read_tensors(ckpt / RNG_FILE)
    try:
        rng = rng_from_files(rng_tensors, rng_saved[ctx.rank], ctx.rank)
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise CheckpointError(
            f"{ckpt}: rank {ctx.rank}'s RNG state in {RNG_FILE} / {TRAIN_STATE} is incomplete ({first_line(exc)})"
        ) from None
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(module, model_state, options=options)
    try:
        set_optimizer_state_dict(module, optimizer, optim_state, options=options)
    except Exception as exc:  # another optimizer or other trainable parameters than this run's
        raise CheckpointError(
            f"{ckpt / OPTIMIZER_FILE}: does not fit this run's optimizer ({first_line(exc)})"
        ) from None
    try:
        set_rng_state(rng)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{ckpt}: rank {ctx.rank}'s RNG state in {RNG_FILE} / {TRAIN_STATE} is invalid ({first_line(exc)})"
        ) from None
    return state
