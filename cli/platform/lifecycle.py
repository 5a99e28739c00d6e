"""A submitted job's life, the same four commands for every target: status, logs (--follow), cancel, ls.

Each finds the target in the registry and its settings in jobs/defaults.yaml ⊕ `--set targets.…`
(another namespace, organization), then asks the target.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from wmtp_cli.platform.registry import get_target
from wmtp_cli.platform.target import JobRow, age


def job_status(name: str, target: str, overrides: Optional[list[str]] = None) -> list[str]:
    """Where a submitted job stands."""
    return get_target(target).status(name, settings_for(target, overrides))


def job_logs(
    name: str, target: str, tail: int, overrides: Optional[list[str]] = None, follow: bool = False
) -> Iterable[str]:
    """The last `tail` lines a submitted job printed; with `follow`, its new lines until it ends."""
    return get_target(target).logs(name, settings_for(target, overrides), tail, follow)


def cancel_job(name: str, target: str, overrides: Optional[list[str]] = None) -> list[str]:
    """Stop a submitted job and remove what runs it (VESSL terminate, PyTorchJob delete, compose down)."""
    return get_target(target).cancel(name, settings_for(target, overrides))


def list_jobs(target: str, overrides: Optional[list[str]] = None) -> list[str]:
    """The jobs this tool submitted to `target`, as table lines (newest first)."""
    rows = get_target(target).list_jobs(settings_for(target, overrides))
    if not rows:
        return [f"no jobs submitted by wmtp found (--target {target})"]
    return job_table(sorted(rows, key=newest_first))


def newest_first(row: JobRow) -> tuple:
    """Sort key: the newest job first, jobs of unknown age last."""
    return (row.created is None, -(row.created.timestamp() if row.created else 0), row.name)


def job_table(rows: list[JobRow]) -> list[str]:
    """NAME STATUS AGE columns, with an ID column first where a target knows jobs by id (VESSL)."""
    with_id = any(row.ref != row.name for row in rows)
    table = [(["ID"] if with_id else []) + ["NAME", "STATUS", "AGE"]]
    table += [([row.ref] if with_id else []) + [row.name, row.status, age(row.created)] for row in rows]
    widths = [max(len(line[column]) for line in table) for column in range(len(table[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in table]


def settings_for(target: str, overrides: Optional[list[str]]) -> dict[str, Any]:
    """The target's settings from jobs/defaults.yaml ⊕ --set targets.… (e.g. another namespace)."""
    from wmtp.assets import asset_dir
    from wmtp.train.config import deep_merge, nest, parse_override, read_yaml

    plugin = get_target(target)
    defaults = read_yaml(asset_dir("jobs") / "defaults.yaml")
    for text in overrides or []:
        defaults = deep_merge(defaults, nest(*parse_override(text)))
    settings = plugin.settings(defaults.get("targets") or {})
    return settings.model_dump() if settings is not None else {}
