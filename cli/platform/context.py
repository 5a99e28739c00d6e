"""Experiment spec → the render context of a job (everything a template may use, nothing secret).

The context is built from the resolved spec and the target's validated settings only; it never
reads secret *values* (the environment, an --env-file), so a template cannot leak one.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from wmtp.errors import WmtpError
from wmtp.train.config import Experiment
from wmtp_cli.platform.names import validate_job_name

if TYPE_CHECKING:
    from wmtp_cli.platform.target import Target

# Inside every container: storage/ lives at /data/storage and the trainer runs in /data, so the
# spec's relative paths (storage/models_v2/…) mean the same thing there as in a checkout.
CONTAINER_WORKDIR = "/data"
CONTAINER_CODE_DIR = "/code"
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PLATFORM_OVERRIDE_PREFIX = "targets."  # --set targets.* shape the job, the trainer never needs them


@dataclass
class JobContext:
    """What a template renders: the job's identity, its trainer invocation and the target's settings."""

    target: str
    name: str
    experiment: str  # what the container passes to `python -m wmtp.train` (a jobs/ experiment name)
    experiment_name: str
    stages: list[str]
    nproc_per_node: int
    run_dir: str  # relative to CONTAINER_WORKDIR (or absolute) for container targets
    output_root: str
    trainer_args: list[str]  # after `torchrun …`: -m wmtp.train EXP [--set …] [--preset P] --run-dir DIR
    secret_names: list[str]
    preemption_grace_s: int  # torchrun's wait for workers to save after SIGTERM (the pod/container gets more)
    settings: dict[str, Any] = field(default_factory=dict)
    tracking_uris: dict[str, Optional[str]] = field(default_factory=dict)  # stage → tracking.uri (None: env/default)
    workdir: str = CONTAINER_WORKDIR
    code_dir: str = CONTAINER_CODE_DIR

    def as_template_vars(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RenderedJob:
    """A validated manifest ready to print, write or submit."""

    context: JobContext
    manifest: str
    document: Any  # the parsed manifest (None for --target local, whose manifest is a command line)
    # --set giving the image a ./jobs spec's changes (carry.py); None for a target that runs the file here
    carried: Optional[list[str]] = None


def build_context(
    experiment: Experiment,
    experiment_arg: str,
    plugin: Target,
    name: str,
    overrides: list[str],
    preset: Optional[str],
) -> JobContext:
    """Validate everything a manifest needs for `plugin`'s target and gather it into a JobContext.

    The caller looked the target up in the registry; taking it here keeps the registry out of the
    modules a target imports (no cycle registry → target → render → context → registry)."""
    target = plugin.name
    validate_job_name(name)
    first = experiment.stages[0]
    settings = plugin.settings(first.targets)
    if plugin.in_container:
        require_shipped_experiment(experiment_arg, target)
    nproc = shared_nproc_per_node(experiment)
    run_dir = posixpath.join(first.output.root, name)
    trainer_overrides = [o for o in overrides if not o.strip().startswith(PLATFORM_OVERRIDE_PREFIX)]
    return JobContext(
        target=target,
        name=name,
        experiment=experiment_arg,
        experiment_name=experiment.name,
        stages=[stage.stage for stage in experiment.stages],
        nproc_per_node=nproc,
        run_dir=run_dir,
        output_root=first.output.root,
        trainer_args=trainer_args(experiment_arg, trainer_overrides, preset, run_dir),
        secret_names=secret_names(first.env),
        preemption_grace_s=max(stage.distributed.preemption_grace_s for stage in experiment.stages),
        settings=settings.model_dump() if settings is not None else {},
        tracking_uris={stage.stage: stage.tracking.uri for stage in experiment.stages},
    )


def trainer_args(experiment: str, overrides: list[str], preset: Optional[str], run_dir: str) -> list[str]:
    """`-m wmtp.train EXP [--set K=V]… [--preset P] --run-dir DIR` (the torchrun program and its args)."""
    args = ["-m", "wmtp.train", experiment]
    for override in overrides:
        args += ["--set", override]
    if preset:
        args += ["--preset", preset]
    return args + ["--run-dir", run_dir]


def require_shipped_experiment(experiment_arg: str, target: str) -> None:
    """Containers see the jobs/ shipped in the image, not this machine's files: require a jobs/ name."""
    if Path(experiment_arg).suffix in (".yaml", ".yml") or "/" in experiment_arg:
        raise WmtpError(
            f"experiment {experiment_arg!r}: --target {target} runs in a container that only has the "
            "shipped jobs/; pass an experiment name (add the file to jobs/ and rebuild the image)"
        )


def shared_nproc_per_node(experiment: Experiment) -> int:
    """One job has one process layout: every stage must ask for the same distributed.nproc_per_node."""
    counts = {stage.stage: stage.distributed.nproc_per_node for stage in experiment.stages}
    if len(set(counts.values())) > 1:
        raise WmtpError(f"distributed.nproc_per_node differs between stages {counts}; a job runs one layout")
    nproc = next(iter(counts.values()))
    if nproc < 1:
        raise WmtpError(f"distributed.nproc_per_node: expected at least 1 (got {nproc})")
    return nproc


def secret_names(env: dict[str, Any]) -> list[str]:
    """`env.secrets`: the *names* of secret environment variables, checked to be plain identifiers."""
    names = env.get("secrets", []) or []
    if not isinstance(names, list):
        raise WmtpError(f"env.secrets: expected a list of variable names (got {names!r})")
    for value in names:
        if not isinstance(value, str) or not ENV_NAME.fullmatch(value):
            raise WmtpError(f"env.secrets: {value!r} is not an environment variable name")
    return list(names)
