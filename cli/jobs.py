"""`wmtp jobs ls` / `jobs cp`: which experiments a name can run (./jobs first, then the shipped ones) and
a copy of a shipped one to edit. Reads YAML only: no torch, instant."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import typer

from wmtp_cli.common import WmtpTyper
from wmtp.errors import WmtpError

app = WmtpTyper(help="Experiment specs: list them (./jobs first, then the shipped ones), copy one to edit.")


def shown_path(path: Path) -> str:
    """A destination as typed from the working directory: `./jobs/smoke.yaml`, or as given when absolute."""
    text = path.as_posix()
    return text if path.is_absolute() or path.parts[:1] in (("..",), (".",)) else f"./{text}"


def spec_stages(path: Path) -> list[str]:
    """The `stages` list of an experiment file (read, not resolved); a bad one names the file."""
    from wmtp.train.config import SpecError, read_yaml

    stages = read_yaml(path).get("stages")
    if not isinstance(stages, list) or not stages or not all(isinstance(stage, str) for stage in stages):
        raise SpecError(f"{path}: stages: expected a non-empty list, e.g. [critic, verifiable]")
    return stages


def local_layers(spec_path: Path, stages: list[str]) -> str:
    """Where a ./jobs experiment's defaults and stage files come from (`layer_file`: its folder, else shipped)."""
    from wmtp.train.config import layer_file

    layers = ["defaults.yaml", *(f"stages/{stage}.yaml" for stage in dict.fromkeys(stages))]
    own = [layer for layer in layers if layer_file(spec_path, layer) == spec_path.parent / layer]
    if not own:
        return "shipped defaults and stages"
    if len(own) == len(layers):
        return "./jobs defaults and stages"
    return f"./jobs {', '.join(own)}; the rest shipped"


def source_note(experiment: str, carried: Optional[list[str]] = None) -> Optional[str]:
    """One line for stderr when a name resolved to a ./jobs file (None for a shipped one or a path):
    `using ./jobs/smoke.yaml (shadows the shipped smoke)`, plus where its layers come from when some are
    its own, plus what a container gets instead of the file (`carried`, see wmtp_cli.platform.carry)."""
    from wmtp.train.config import find_experiment

    source = find_experiment(experiment)
    if not source.local:
        return None
    notes = [f"shadows the shipped {experiment}"] if source.shadows else []
    layers = local_layers(source.path, spec_stages(source.path))
    if layers != "shipped defaults and stages":
        notes.append(layers)
    line = f"using {source.shown}" + (f" ({'; '.join(notes)})" if notes else "")
    if carried is not None:
        shown = " ".join(f"--set {text}" for text in carried[:3]) + (" …" if len(carried) > 3 else "")
        line += (f"; the container gets the shipped {experiment} with {shown}" if carried
                 else f"; the container gets the shipped {experiment}, which resolves the same")
    return line


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
            note = "; ".join([*(["shadows the shipped one"] if source.shadows else []),
                              local_layers(source.path, stages)])
        rows.append((name, ", ".join(stages), "./jobs" if source.local else "shipped", note))
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    for row in rows:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + f"  {row[3]}".rstrip())


@app.command("cp")
def cp(
    name: str = typer.Argument(..., help="A shipped experiment (see `wmtp jobs ls`)."),
    to: Path = typer.Option(Path("jobs"), "--to", help="Folder to copy into (./jobs is where names are looked up)."),
    with_defaults: bool = typer.Option(False, "--with-defaults",
                                       help="Also copy defaults.yaml and the stages/<stage>.yaml files it uses."),
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
    typer.echo(f"next: edit {shown(layers[0])}, then `wmtp train {spec} --dry-run`"
               + ("" if local else " (only ./jobs is searched by name)"))
