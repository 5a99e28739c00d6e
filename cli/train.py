"""`wmtp train`: run an experiment on this machine (torchrun when the spec asks for several processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import typer

from wmtp.train.run_lock import HELD_ENV, RunLock, acquire
from wmtp_cli.envfile import declared_secret_names, load_env_file, read_env_file, refuse_secret_overrides
from wmtp_cli.experiments import source_note

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def train(
    spec: str = typer.Argument(..., help="jobs/<experiment>.yaml, or an experiment name (smoke, verifiable, …)."),
    overrides: list[str] = typer.Option([], "--set", help="Override KEY.PATH=VALUE (repeatable)."),
    preset: Optional[str] = typer.Option(None, help="A jobs/presets/<name>.yaml layer, e.g. local-light."),
    micro: bool = typer.Option(
        False,
        "--micro",
        help="The experiment's stages on the micro model and the small "
        "splits, one local process (the `micro` preset, before --preset); builds what is "
        "missing first.",
    ),
    run_dir: Optional[Path] = typer.Option(None, help="Run directory; one holding checkpoints is resumed."),
    stages: list[str] = typer.Option(
        [], "--stage", help="Run only this stage (repeatable); a stage it needs must have finished in --run-dir."
    ),
    env_file: Optional[Path] = typer.Option(None, help="KEY=VALUE file with credentials (never printed)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved spec of every stage and exit."),
) -> None:
    """Train every stage of an experiment (or the --stage ones); prints progress, metrics go to MLflow."""
    from wmtp.train.config import check_world_size, dump_spec, load_experiment, select_stages
    from wmtp.train.laptop import PRESET as MICRO_PRESET
    from wmtp.train.laptop import build_missing

    load_env_file(env_file)
    refuse_secret_overrides(overrides, [], read_env_file(env_file) if env_file else {})  # before spec errors quote one
    presets = ([MICRO_PRESET] if micro else []) + ([preset] if preset else [])
    experiment = select_stages(load_experiment(spec, overrides, presets), stages)
    # As `submit` does: a secret's value in --set would be written into spec.yaml, MLflow and the logs.
    refuse_secret_overrides(
        overrides,
        declared_secret_names([stage.env for stage in experiment.stages]),
        read_env_file(env_file) if env_file else {},
    )
    check_world_size(experiment, experiment.stages[0].launch_world_size())
    # stderr: a dry run's stdout is the resolved specs only. After the checks, so an error stays one line.
    note = source_note(spec)
    if dry_run:
        if note:
            typer.echo(note, err=True)
        for stage in experiment.stages:
            typer.echo(f"# stage: {stage.stage}\n{dump_spec(stage)}---")
        return
    # Only now: the runner imports torch (and torch.distributed.checkpoint), seconds a dry run need not pay.
    from wmtp.train.resume import check_run_dir
    from wmtp.train.runner import check_inputs, check_stage_needs, default_run_dir, main_process

    run_dir = run_dir or default_run_dir(experiment)
    check_stage_needs(experiment, run_dir)  # read-only: a missing critic is refused before the lock makes the dir
    check_run_dir(experiment, run_dir)  # a run dir started with another spec: refused once, not by N ranks
    if micro:
        build_missing(experiment, log=typer.echo)  # micro model, smoke dataset, small splits (each once)
    check_inputs(experiment)  # here, before a run dir exists and before torchrun starts N ranks
    check_devices(experiment)
    if note:
        typer.echo(note, err=True)
    dist = experiment.stages[0].distributed
    # One writer per run dir, for the run's lifetime; a second one is refused here, having written nothing.
    with acquire(run_dir) as lock:
        if experiment.stages[0].launch_world_size() > 1:
            raise typer.Exit(
                launch_torchrun(
                    spec, overrides, presets, run_dir, dist.nproc_per_node, dist.preemption_grace_s, stages, lock
                )
            )
        typer.echo(f"run dir: {run_dir}")
        main_process(experiment, run_dir)


def check_devices(experiment) -> None:
    """Resolve each stage's `train.device` (auto: cuda, else mps, else cpu) and its `model.dtype` on it now:
    a device this machine lacks, or bfloat16 on an Apple GPU, stops here rather than in every rank."""
    from wmtp.device import precision, resolve_device

    for stage in experiment.stages:
        precision(stage.model.dtype, resolve_device(stage.train.device))


def launch_torchrun(
    spec: str,
    overrides: list[str],
    presets: Sequence[str],
    run_dir: Path,
    nproc: int,
    grace_s: int = 600,
    stages: Sequence[str] = (),
    lock: Optional[RunLock] = None,
) -> int:
    """Hand over to torchrun (single node); it sets RANK/WORLD_SIZE/MASTER_* for `python -m wmtp.train`.

    Preemption (SIGTERM to this process) must reach the workers, which save a checkpoint at the next
    step boundary and exit 0. What torch.distributed.elastic does with it (torch 2.13, read from
    elastic/multiprocessing/api.py, agent/server/api.py, launcher/api.py):
    - its agent handles TORCHELASTIC_SIGNALS_TO_HANDLE (`--signals-to-handle`, default SIGTERM,SIGINT,
      SIGHUP,SIGQUIT) by raising SignalException, then sends that signal to every worker, waits
      `--shutdown-timeout` / TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds (default 30) and SIGKILLs the rest;
    - it then re-raises: torchrun exits 1 with a traceback even when every worker saved and exited 0;
    - a second signal during that wait raises again out of the wait: the agent quits without waiting.
    Hence: torchrun runs in its own session (a signal to our process group, e.g. Ctrl-C, does not reach
    it directly), we pass it SIGTERM — the signal workers save on — for the first SIGTERM/SIGINT/SIGHUP
    only, it gets SIGTERM from the kernel if this process dies (PR_SET_PDEATHSIG), set TORCH_ELASTIC_SHUTDOWN_TIMEOUT
    to `grace_s` (torch versions before the variable keep 30 s), and exit 0 when torchrun failed only
    because of that signal: a checkpoint was written after it arrived.

    `lock`, the run dir's lock this process holds: torchrun inherits its descriptor (so the lock outlives
    us until the workers are gone) and rank 0 learns from WMTP_RUN_LOCK_HELD not to lock again.
    """
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "wmtp.train",
        spec,
        "--run-dir",
        str(run_dir),
    ]
    for override in overrides:
        command += ["--set", override]
    for preset in presets:
        command += ["--preset", preset]
    for stage in stages:
        command += ["--stage", stage]
    typer.echo(f"run dir: {run_dir}\nlaunching: torchrun --standalone --nproc_per_node={nproc} -m wmtp.train {spec} …")
    env = {**os.environ, "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(grace_s)}
    if lock is not None:
        env[HELD_ENV] = str(lock.path)
    signalled: list[float] = []
    children: list[subprocess.Popen] = []

    def forward(signum, _frame):
        if signalled:
            typer.echo("already stopping: waiting for the workers to save", err=True)
            return
        signalled.append(time.time())
        typer.echo(f"{signal.Signals(signum).name}: asking the workers to save (up to {grace_s} s)", err=True)
        if children:
            # Always SIGTERM: torchrun passes on the signal it got, and the workers save on SIGTERM only.
            children[0].send_signal(signal.SIGTERM)

    # Handlers before the child exists: a signal in between is remembered and passed on at once.
    previous = {s: signal.signal(s, forward) for s in FORWARDED_SIGNALS}
    try:
        children.append(
            subprocess.Popen(
                command,
                env=env,
                start_new_session=True,
                preexec_fn=term_with_parent,
                pass_fds=() if lock is None else (lock.fd,),
            )
        )
        if signalled:
            children[0].send_signal(signal.SIGTERM)
        returncode = children[0].wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if returncode != 0 and signalled and saved_since(run_dir, signalled[0]):
        typer.echo("torchrun exited after the signal; the workers saved a checkpoint: rerun to resume")
        return 0
    return returncode


def term_with_parent() -> None:
    """In the torchrun child: SIGTERM when `wmtp train` dies, even by SIGKILL (Linux), so torchrun's own
    session — which no signal to our process group reaches — still asks its workers to save."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def saved_since(run_dir: Path, since: float) -> bool:
    """A checkpoint of any stage was written at or after `since` (its files are new: atomic rename)."""
    from wmtp.train.checkpointing import TRAIN_STATE

    # 50 ms: file times come from a coarser clock than time.time().
    states = Path(run_dir).glob(f"*/checkpoints/*/{TRAIN_STATE}")
    # A hidden dir is a checkpoint still being written (renamed into place when complete): not a save.
    return any(not p.parent.name.startswith(".") and p.stat().st_mtime >= since - 0.05 for p in states)
