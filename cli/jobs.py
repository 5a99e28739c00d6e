"""`wmtp jobs ls` / `jobs cp`: which experiments a name can run (./jobs first, then the shipped ones) and
a copy of a shipped one to edit. Reads YAML only: no torch, instant."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer

from wmtp.errors import WmtpError
from wmtp_cli.common import WmtpTyper
from wmtp_cli.experiments import local_layers, spec_stages

app = WmtpTyper(help="Experiment specs: list them (./jobs first, then the shipped ones), copy one to edit.")


def shown_path(path: Path) -> str:
    """A destination as typed from the working directory: `./jobs/smoke.yaml`, or as given when absolute."""
    text = path.as_posix()
    return text if path.is_absolute() or path.parts[:1] in (("..",), (".",)) else f"./{text}"


@app.command("ls")
def ls() -> None:
    """List the experiments a name runs: stages, source (./jobs or shipped), and what a ./jobs one shadows."""
    from wmtp.assets import asset_dir
    from wmtp.train.config import LOCAL_JOBS, experiment_names, find_experiment

    rows = [("NAME", "STAGES", "SOURCE", "NOTE")]
    for name in sorted({*experiment_names(LOCAL_JOBS), *experiment_names(asset_dir("jobs"))}):
        source = find_experiment(name)
        stages = spec_stages(source.path)
        note = ""
        if source.local:
            note = "; ".join(
                [*(["shadows the shipped one"] if source.shadows else []), local_layers(source.path, stages)]
            )
        rows.append((name, ", ".join(stages), "./jobs" if source.local else "shipped", note))
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    for row in rows:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + f"  {row[3]}".rstrip())


@app.command("cp")
def cp(
    name: str = typer.Argument(..., help="A shipped experiment (see `wmtp jobs ls`)."),
    to: Path = typer.Option(Path("jobs"), "--to", help="Folder to copy into (./jobs is where names are looked up)."),
    with_defaults: bool = typer.Option(
        False, "--with-defaults", help="Also copy defaults.yaml and the stages/<stage>.yaml files it uses."
    ),
) -> None:
    """Copy a shipped experiment into ./jobs to edit; it then runs instead of the shipped one of that name."""
    from wmtp.assets import asset_dir
    from wmtp.train.config import LOCAL_JOBS, experiment_names, same_file

    shipped = asset_dir("jobs")
    available = experiment_names(shipped)
    if name not in available:
        raise WmtpError(f"experiment {name!r}: not a shipped experiment; shipped: {', '.join(available)}")
    layers = [f"{name}.yaml"]
    if with_defaults:
        stages = dict.fromkeys(spec_stages(shipped / layers[0]))
        layers += ["defaults.yaml", *(f"stages/{stage}.yaml" for stage in stages)]
    local = to.resolve() == LOCAL_JOBS.resolve()
    shown = lambda layer: shown_path(to / layer)  # noqa: E731
    # Every destination is checked before anything is written: a refused copy leaves nothing half done.
    for layer in layers:
        if same_file(shipped / layer, to / layer):
            raise WmtpError(f"{shown(layer)} is the shipped file itself (this checkout's jobs/): edit it there")
        if (to / layer).exists():
            raise WmtpError(f"{shown(layer)} already exists: edit it, or delete it to copy the shipped one again")
    for layer in layers:
        (to / layer).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shipped / layer, to / layer)
        typer.echo(f"wrote {shown(layer)}")
    spec = name if local else (to / layers[0]).as_posix()
    typer.echo(
        f"next: edit {shown(layers[0])}, then `wmtp train {spec} --dry-run`"
        + ("" if local else " (only ./jobs is searched by name)")
    )
