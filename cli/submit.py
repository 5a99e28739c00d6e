"""`wmtp submit` / `render` / `status` / `logs` / `cancel` / `ls`: experiment specs as jobs on the targets
of `wmtp_cli.platform.registry` (VESSL, Kubernetes, local docker compose, this machine), and their life
there. Thin commands over `wmtp_cli.platform`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from wmtp_cli.envfile import load_env_file
from wmtp_cli.platform.registry import DEFAULT_TARGET, names, tracked_names

TARGET_HELP = f"Where the job runs; {DEFAULT_TARGET} = this machine."
REF_HELP = "Job name, or the VESSL run id (see `wmtp ls`)."
SETTINGS_HELP = "targets.* overrides, e.g. targets.k8s.namespace=team."


def complete_target(incomplete: str) -> list[str]:
    """Shell completion of --target: the registry's names."""
    return [name for name in names() if name.startswith(incomplete)]


def complete_tracked_target(incomplete: str) -> list[str]:
    """Shell completion of a lifecycle command's --target: the targets whose jobs it can find."""
    return [name for name in tracked_names() if name.startswith(incomplete)]


def target_option(default=...):
    """The --target option every command shares: its choices are the registry's. A name that is not one
    is refused by the registry in one line (exit 2), not by click's multi-line usage error."""
    return typer.Option(
        default, "--target", "-t", metavar=f"[{'|'.join(names())}]", help=TARGET_HELP, autocompletion=complete_target
    )


def tracked_target_option():
    """--target of status / logs / cancel / ls: a foreground target (local) is no choice there (it is refused
    in one line: the job runs in its terminal)."""
    return typer.Option(
        ...,
        "--target",
        "-t",
        metavar=f"[{'|'.join(tracked_names())}]",
        help="Where the job was submitted.",
        autocompletion=complete_tracked_target,
    )


def submit(
    experiment: str = typer.Argument(..., help="An experiment in jobs/ (`wmtp jobs ls` lists them), or a spec file."),
    target: str = target_option(DEFAULT_TARGET),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override KEY.PATH=VALUE (repeatable; targets.* shape the job)."
    ),
    preset: Optional[str] = typer.Option(None, help="A jobs/presets/<name>.yaml layer, e.g. local-light."),
    name: Optional[str] = typer.Option(None, help="Job name (DNS-1035 label); default wmtp-<experiment>-<time>."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the manifest and submit nothing."),
    server_dry_run: bool = typer.Option(
        False, "--server-dry-run", help="k8s: let the API server validate, create nothing."
    ),
    env_file: Optional[Path] = typer.Option(None, help="KEY=VALUE file with credentials (referenced, never printed)."),
) -> None:
    """Render, validate and submit an experiment job; print what was created and how to follow it."""
    from wmtp_cli.platform.jobs import prepare_job, submit_job
    from wmtp_cli.platform.registry import get_target

    job = prepare_job(experiment, target, overrides, preset, name, env_file)
    say_which_file(experiment, job)
    if dry_run:
        typer.echo(job.manifest, nl=False)
        warn_about_submit_refusal(job)
        typer.echo(f"# dry run: {target} job {job.context.name} not submitted", err=True)
        return
    plugin = get_target(target)
    if plugin.env_file_credentials:
        load_env_file(env_file)  # SDK / client credentials (VESSL_ACCESS_TOKEN, KUBECONFIG) may live there
    starting = plugin.starting_line(job)
    if starting:
        typer.echo(starting)
    lines, status = submit_job(job, env_file, server_dry_run)
    for line in lines:
        typer.echo(line)
    if status:
        raise typer.Exit(status)


def render(
    experiment: str = typer.Argument(..., help="An experiment in jobs/."),
    target: str = target_option(),
    output: Path = typer.Option(..., "--output", "-o", help="File to write the manifest to."),
    overrides: list[str] = typer.Option([], "--set", help="Override KEY.PATH=VALUE (repeatable)."),
    preset: Optional[str] = typer.Option(None, help="A jobs/presets/<name>.yaml layer."),
    name: Optional[str] = typer.Option(None, help="Job name (DNS-1035 label)."),
    env_file: Optional[Path] = typer.Option(None, help="local-docker: env file the compose file references."),
) -> None:
    """Write the validated manifest of an experiment job to a file (nothing is submitted)."""
    from wmtp.common.files import write_text_atomic
    from wmtp_cli.platform.jobs import prepare_job

    job = prepare_job(experiment, target, overrides, preset, name, env_file)
    say_which_file(experiment, job)
    write_text_atomic(output, job.manifest)
    warn_about_submit_refusal(job)
    typer.echo(f"wrote {output} ({target} job {job.context.name})")


def say_which_file(experiment: str, job) -> None:
    """On stderr (stdout may be the manifest): the ./jobs file a name resolved to, and for a container
    target the shipped experiment and --set it gets in its place (the image has only the shipped jobs/)."""
    from wmtp_cli.experiments import source_note

    note = source_note(experiment, job.carried)
    if note:
        typer.echo(note, err=True)


def warn_about_submit_refusal(job) -> None:
    """A manifest `wmtp submit` would refuse (VESSL without a tracking store that outlives the run) is
    still shown or written, for reading; say on stderr why it would not be submitted as it is."""
    from wmtp_cli.platform.registry import get_target

    problem = get_target(job.context.target).submit_refusal(job.context)
    if problem:
        typer.echo(f"warning: {problem}", err=True)


def status(
    name: str = typer.Argument(..., help=REF_HELP),
    target: str = tracked_target_option(),
    overrides: list[str] = typer.Option([], "--set", help=SETTINGS_HELP),
) -> None:
    """Where a submitted job stands."""
    from wmtp_cli.platform.lifecycle import job_status

    for line in job_status(name, target, overrides):
        typer.echo(line)


def logs(
    name: str = typer.Argument(..., help=REF_HELP),
    target: str = tracked_target_option(),
    tail: int = typer.Option(200, help="Lines from the end."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Then print new lines as they come, until the job ends."),
    overrides: list[str] = typer.Option([], "--set", help=SETTINGS_HELP),
) -> None:
    """The last lines a submitted job printed (the trainer's rank-0 output); --follow keeps printing."""
    from wmtp_cli.platform.lifecycle import job_logs

    for line in job_logs(name, target, tail, overrides, follow):
        typer.echo(line)


def cancel(
    name: str = typer.Argument(..., help=REF_HELP),
    target: str = tracked_target_option(),
    overrides: list[str] = typer.Option([], "--set", help=SETTINGS_HELP),
) -> None:
    """Stop a submitted job and remove what runs it (VESSL terminate, PyTorchJob delete, compose down)."""
    from wmtp_cli.platform.lifecycle import cancel_job

    for line in cancel_job(name, target, overrides):
        typer.echo(line)


def list_jobs(
    target: str = tracked_target_option(),
    overrides: list[str] = typer.Option([], "--set", help=SETTINGS_HELP),
) -> None:
    """The jobs this tool submitted to a target: name, status, age (newest first)."""
    from wmtp_cli.platform.lifecycle import list_jobs as job_lines

    for line in job_lines(target, overrides):
        typer.echo(line)


def register(app: typer.Typer) -> None:
    """Add `submit`, `render`, `status`, `logs`, `cancel` and `ls` to `app`."""
    app.command("submit")(submit)
    app.command("render")(render)
    app.command("status")(status)
    app.command("logs")(logs)
    app.command("cancel")(cancel)
    app.command("ls")(list_jobs)
