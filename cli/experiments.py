"""Where an experiment name comes from, in words: `wmtp jobs ls`'s stages and layers columns and the
`using ./jobs/NAME.yaml …` note of `wmtp train` / `wmtp submit`. Shared by those command modules, which
import no other command module (docs/architecture.md, "Layers"). Reads YAML only: no torch."""

from __future__ import annotations

from pathlib import Path
from typing import Optional


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
        line += (
            f"; the container gets the shipped {experiment} with {shown}"
            if carried
            else f"; the container gets the shipped {experiment}, which resolves the same"
        )
    return line
