"""Resuming a run dir continues the same run: the spec each stage was started with, each step once.

- `spec_differences` (pure): the keys whose values differ between the spec a stage dir was started
  with (its `spec.yaml`) and the requested one, leaving out the platform-only keys (`PLATFORM_ONLY`):
  where and how the job runs may change between a run and its resume, what is trained may not.
- `check_run_dir`: refuses a run dir holding a stage started with another spec, finished stages
  included, in one line naming each differing key with both values (the runner on every rank before
  any stage trains; `wmtp train` before it launches torchrun).
- `drop_metrics_after`: on resume from step S, `metrics.jsonl` keeps only the entries up to S, so the
  steps the interrupted run logged after its checkpoint are not there twice (MLflow: `forget_after`
  in wmtp.tracking).

Paths (`model.path`, `data.*`, `rho1.reference`, …) are compared as written. Specs give them relative
to the working dir (`storage/models_v2/…`), and every target runs in a dir where `storage/` means the
same thing (cli/platform/context.py), so a run dir pulled to another machine resumes with the same
strings; a path that differs may be other data, which a string cannot rule out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from pydantic import ValidationError

from wmtp.common.files import write_text_atomic
from wmtp.train.config import (
    Experiment,
    SpecError,
    drop_foreign_sections,
    format_validation_error,
    parse_stage_spec,
    read_yaml,
)

SPEC_FILE = "spec.yaml"
METRICS_FILE = "metrics.jsonl"

# Keys (and whole sections) that may change when a run dir is resumed: they say where and how the job
# runs, not what it trains or logs. Everything else must be as the stage was started.
PLATFORM_ONLY = (
    "targets",  # submission settings of each platform (image, cluster, namespace, …)
    "env",  # environment constants and secret *names*
    "output",  # output.root only picks the dir of a *new* run; this one is given
    "tracking.uri",  # the same store reached from another machine, or through a server instead of its file
    "tracking.buffer_size",  # how many points survive an outage, not which are logged
    "eval",  # evaluation of the final checkpoint, after training
    "data.num_workers",  # DataLoader processes; the sampler alone decides what each step reads
    "train.device",  # cuda, mps or cpu: a run started on a GPU may go on on a laptop, and back
    "train.compile",  # per-block torch.compile computes the same losses (tested) — only faster
    "train.peak_tflops",  # the MFU denominator: a logged ratio, not what is trained
    # How the ranks run, not how many (ranks are compared below): DDP and FSDP2 train the same
    # global batch, activation checkpointing recomputes the same values, the rest is transport/timeouts.
    "distributed",
)
RANKS = "ranks (distributed.strategy, distributed.nproc_per_node)"
MAX_SHOWN = 10  # differences named in the one-line error; the rest are counted


def launch_ranks(spec: dict) -> Any:
    """Processes the spec trains on: nproc_per_node under DDP / FSDP, else one (`StageSpec.launch_world_size`).

    The count decides the global batch (and so the steps per epoch, the LR schedule and what each step
    reads) and checkpoints hold one RNG state per rank: a resumed stage needs the same count."""
    distributed = spec.get("distributed") or {}
    if distributed.get("strategy", "none") == "none":
        return 1
    return distributed.get("nproc_per_node", 1)


def flatten_spec(spec: dict, prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1e-5}} → {"train.lr": 1e-5}; lists and scalars are leaves."""
    flat: dict[str, Any] = {}
    for key, value in spec.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_spec(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def is_platform_only(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in PLATFORM_ONLY)


def comparable(spec: dict) -> dict[str, Any]:
    """The keys of a spec (as `StageSpec.to_dict()` gives it) that a resume must keep, flattened; of the
    objectives' sections only its own objective's (`drop_foreign_sections`: a spec.yaml written before stage
    specs held one section has every objective's, and the others never took part in the run)."""
    flat = {k: v for k, v in flatten_spec(drop_foreign_sections(spec)).items() if not is_platform_only(k)}
    flat[RANKS] = launch_ranks(spec)
    return flat


MISSING = object()


def spec_differences(saved: dict, requested: dict) -> list[tuple[str, Any, Any]]:
    """(key, saved value, requested value) of every key a resume must keep whose values differ, in the
    requested spec's key order (keys only the saved spec has last); a key absent on one side is `MISSING`."""
    old, new = comparable(saved), comparable(requested)
    keys = list(new) + [k for k in old if k not in new]
    return [(k, old.get(k, MISSING), new.get(k, MISSING)) for k in keys if old.get(k, MISSING) != new.get(k, MISSING)]


def show_value(value: Any) -> str:
    """A value as one would write it in a spec: 1e-05, null, true, [0.9, 0.95], storage/x (quoted if blank)."""
    if value is MISSING:
        return "(unset)"
    if isinstance(value, str):
        return value if value.strip() and value == value.strip() and "," not in value else json.dumps(value)
    return json.dumps(value)


def describe_differences(differences: list[tuple[str, Any, Any]]) -> str:
    """`train.lr 1e-05 → 3e-05, data.max_length 2048 → 1024` (at most MAX_SHOWN, then `(+N more)`)."""
    shown = ", ".join(f"{k} {show_value(a)} → {show_value(b)}" for k, a, b in differences[:MAX_SHOWN])
    more = len(differences) - MAX_SHOWN
    return shown + (f" (+{more} more)" if more > 0 else "")


def read_saved_spec(path: Path) -> dict:
    """The spec a stage dir was started with, validated (defaults filled as today's code fills them),
    as `StageSpec.to_dict()`; a file that does not parse or validate is a SpecError naming it. Sections of
    other objectives (every spec.yaml written before stage specs held only their own) are left out."""
    raw = read_yaml(path)  # invalid YAML → `<path>:<line>: invalid YAML (…)`
    try:
        return parse_stage_spec(drop_foreign_sections(raw)).to_dict()
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, str(path))) from None


def check_run_dir(experiment: Experiment, run_dir: Optional[Path]) -> None:
    """Refuse to resume `run_dir` when a stage in it was started with another spec (platform-only keys
    aside), whether the stage finished or not: SpecError, one line, both values of each differing key.

    Checked for every stage before any trains, so that a run is refused whole rather than after hours
    of its first stages; a stage dir without spec.yaml has not started."""
    if run_dir is None:
        return
    for spec in experiment.stages:
        path = Path(run_dir) / spec.stage / SPEC_FILE
        if not path.is_file():
            continue
        try:
            saved = read_saved_spec(path)
        except SpecError as exc:
            raise SpecError(
                f"stage {spec.stage}: the spec this run dir was started with cannot be read: {exc}"
            ) from None
        # spec.yaml holds URLs redacted (`dump_spec`): compare like with like, and never print a credential.
        from wmtp.tracking import redact_urls

        differences = spec_differences(saved, redact_urls(spec.to_dict()))
        if differences:
            raise SpecError(
                f"stage {spec.stage}: run dir {run_dir} was started with another spec: "
                f"{describe_differences(differences)}; resume with the same spec, or start a new "
                "run dir (--run-dir NEW or leave --run-dir out)"
            )


def drop_metrics_after(path: Path, step: int) -> int:
    """Keep the entries of `metrics.jsonl` with step ≤ `step` (what the resumed checkpoint had seen);
    returns how many were dropped.

    The file is rewritten atomically (temp file, then rename): a kill while doing it leaves the old file
    or the new one. A line cut short by a kill of the writer is dropped too."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
            keep = isinstance(entry, dict) and entry.get("step", step + 1) <= step
        except (ValueError, TypeError):  # a torn line, or a step that is not a number
            keep = False
        if keep:
            kept.append(line + "\n")
        else:
            dropped += 1
    if dropped:
        write_text_atomic(path, "".join(kept))
    return dropped
