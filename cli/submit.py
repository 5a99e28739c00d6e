"""`wmtp submit` / `render` / `status` / `logs`: experiment specs as jobs on VESSL, Kubernetes,
local docker compose or this machine. Thin commands over `wmtp_cli.platform`."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

import typer

from wmtp_cli.envfile import load_env_file

TARGET_HELP = "vessl | k8s | local-docker | local (this machine, the default)."


def submit(
    experiment: str = typer.Argument(..., help="An experiment in jobs/ (smoke, baseline, critic, verifiable, rho1)."),
    target: str = typer.Option("local", "--target", "-t", help=TARGET_HELP),
    overrides: list[str] = typer.Option([], "--set", help="Override KEY.PATH=VALUE (repeatable; targets.* shape the job)."),
    preset: Optional[str] = typer.Option(None, help="A jobs/presets/<name>.yaml layer, e.g. local-light."),
    name: Optional[str] = typer.Option(None, help="Job name (DNS-1035 label); default wmtp-<experiment>-<time>."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the manifest and submit nothing."),
    server_dry_run: bool = typer.Option(False, "--server-dry-run", help="k8s: let the API server validate, create nothing."),
    env_file: Optional[Path] = typer.Option(None, help="KEY=VALUE file with credentials (referenced, never printed)."),
) -> None:
    """Render, validate and submit an experiment job; print what was created and how to follow it."""
    from wmtp_cli.platform.jobs import prepare_job, submit_job

    job = prepare_job(experiment, target, overrides, preset, name, env_file)
    if dry_run:
        typer.echo(job.manifest, nl=False)
        warn_about_submit_refusal(job)
        typer.echo(f"# dry run: {target} job {job.context.name} not submitted", err=True)
        return
    if target in ("vessl", "k8s"):
        load_env_file(env_file)  # SDK / client credentials (VESSL_ACCESS_TOKEN, KUBECONFIG) may live there
    if target == "local":
        typer.echo(f"running: {job.manifest.strip()}")
    lines, status = submit_job(job, env_file, server_dry_run)
    for line in lines:
        typer.echo(line)
    if status:
        raise typer.Exit(status)


def render(
    experiment: str = typer.Argument(..., help="An experiment in jobs/."),
    target: str = typer.Option(..., "--target", "-t", help=TARGET_HELP),
    output: Path = typer.Option(..., "--output", "-o", help="File to write the manifest to."),
    overrides: list[str] = typer.Option([], "--set", help="Override KEY.PATH=VALUE (repeatable)."),
    preset: Optional[str] = typer.Option(None, help="A jobs/presets/<name>.yaml layer."),
    name: Optional[str] = typer.Option(None, help="Job name (DNS-1035 label)."),
    env_file: Optional[Path] = typer.Option(None, help="local-docker: env file the compose file references."),
) -> None:
    """Write the validated manifest of an experiment job to a file (nothing is submitted)."""
    from wmtp_cli.platform.jobs import prepare_job

    job = prepare_job(experiment, target, overrides, preset, name, env_file)
    write_atomically(output, job.manifest)
    warn_about_submit_refusal(job)
    typer.echo(f"wrote {output} ({target} job {job.context.name})")


def warn_about_submit_refusal(job) -> None:
    """A manifest `wmtp submit` would refuse (VESSL without a tracking store that outlives the run) is
    still shown or written, for reading; say on stderr why it would not be submitted as it is."""
    if job.context.target == "vessl":
        from wmtp_cli.platform.vessl import tracking_problem

        problem = tracking_problem(job.context)
        if problem:
            typer.echo(f"warning: {problem}", err=True)


def status(
    name: str = typer.Argument(..., help="Job name (k8s, local-docker) or VESSL run id."),
    target: str = typer.Option(..., "--target", "-t", help=TARGET_HELP),
    overrides: list[str] = typer.Option([], "--set", help="targets.* overrides, e.g. targets.k8s.namespace=team."),
) -> None:
    """Where a submitted job stands."""
    from wmtp_cli.platform.jobs import job_status

    for line in job_status(name, target, overrides):
        typer.echo(line)


def logs(
    name: str = typer.Argument(..., help="Job name (k8s, local-docker) or VESSL run id."),
    target: str = typer.Option(..., "--target", "-t", help=TARGET_HELP),
    tail: int = typer.Option(200, help="Lines from the end."),
    overrides: list[str] = typer.Option([], "--set", help="targets.* overrides, e.g. targets.k8s.namespace=team."),
) -> None:
    """The last lines a submitted job printed (the trainer's rank-0 output)."""
    from wmtp_cli.platform.jobs import job_logs

    for line in job_logs(name, target, tail, overrides):
        typer.echo(line)


def write_atomically(path: Path, text: str) -> None:
    """Write via a temp file in the same folder and rename, so a failure leaves nothing half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w") as stream:
        stream.write(text)
    os.replace(temp, path)


def register(app: typer.Typer) -> None:
    """Add `submit`, `render`, `status` and `logs` to `app`."""
    app.command("submit")(submit)
    app.command("render")(render)
    app.command("status")(status)
    app.command("logs")(logs)
