"""`wmtp train`: run an experiment on this machine (torchrun when the spec asks for several processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import typer

from cli.envfile import load_env_file


def train(
    spec: str = typer.Argument(..., help="jobs/<experiment>.yaml, or an experiment name (smoke, verifiable, …)."),
    overrides: list[str] = typer.Option([], "--set", help="Override KEY.PATH=VALUE (repeatable)."),
    preset: Optional[str] = typer.Option(None, help="A jobs/presets/<name>.yaml layer, e.g. local-light."),
    run_dir: Optional[Path] = typer.Option(None, help="Run directory; one holding checkpoints is resumed."),
    env_file: Optional[Path] = typer.Option(None, help="KEY=VALUE file with credentials (never printed)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved spec of every stage and exit."),
) -> None:
    """Train every stage of an experiment; prints progress, metrics go to MLflow."""
    from wmtp.train.config import dump_spec, load_experiment
    from wmtp.train.runner import check_inputs, default_run_dir, main_process

    load_env_file(env_file)
    experiment = load_experiment(spec, overrides, preset)
    if dry_run:
        for stage in experiment.stages:
            typer.echo(f"# stage: {stage.stage}\n{dump_spec(stage)}---")
        return
    check_inputs(experiment)  # here, before a run dir exists and before torchrun starts N ranks
    run_dir = run_dir or default_run_dir(experiment)
    dist = experiment.stages[0].distributed
    if dist.nproc_per_node > 1 and dist.strategy != "none":
        raise typer.Exit(launch_torchrun(spec, overrides, preset, run_dir, dist.nproc_per_node))
    typer.echo(f"run dir: {run_dir}")
    main_process(experiment, run_dir)


def launch_torchrun(spec: str, overrides: list[str], preset: Optional[str], run_dir: Path, nproc: int) -> int:
    """Hand over to torchrun (single node); it sets RANK/WORLD_SIZE/MASTER_* for `python -m wmtp.train`."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "wmtp.train", spec, "--run-dir", str(run_dir)]
    for override in overrides:
        command += ["--set", override]
    if preset:
        command += ["--preset", preset]
    typer.echo(f"run dir: {run_dir}\nlaunching: torchrun --standalone --nproc_per_node={nproc} -m wmtp.train {spec} …")
    return subprocess.call(command, env=os.environ.copy())
