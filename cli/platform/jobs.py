"""One pipeline for every target: spec → context → manifest → validate → submit, each step the job's
`Target`'s (from the registry). status / logs / cancel / ls: `lifecycle`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from wmtp.errors import WmtpError
from wmtp_cli.envfile import read_env_file
from wmtp_cli.platform.carry import image_arguments
from wmtp_cli.platform.context import PLATFORM_OVERRIDE_PREFIX, RenderedJob, build_context
from wmtp_cli.platform.names import default_job_name
from wmtp_cli.platform.registry import get_target, targets
from wmtp_cli.secrets import find_url_credentials, refuse_manifest_credentials, refuse_secret_overrides


def prepare_job(
    experiment: str,
    target: str,
    overrides: Optional[list[str]] = None,
    preset: Optional[str] = None,
    name: Optional[str] = None,
    env_file: Optional[Path] = None,
) -> RenderedJob:
    """Resolve the spec, render the target's manifest and validate it; nothing is submitted."""
    from wmtp.train.config import load_experiment

    plugin = get_target(target)
    overrides = list(overrides or [])
    refuse_url_credentials(overrides)
    env_values = read_env_file(env_file) if env_file else {}
    refuse_secret_overrides(overrides, [], env_values)  # before the spec loads: no spec error quotes one back
    resolved = load_experiment(experiment, overrides, preset)
    # A ./jobs spec: the container's trainer gets the shipped one plus its changes (checked to match).
    carried, image_preset = image_arguments(experiment, resolved, target, overrides, preset, plugin.in_container)
    context = build_context(
        resolved, experiment, plugin, name or default_job_name(resolved.name), (carried or []) + overrides, image_preset
    )
    manifest = plugin.render(context, env_file)
    document = plugin.parse(manifest)
    plugin.validate(document, manifest, context)
    refuse_manifest_credentials(
        context.trainer_args if document is None else document,  # local: its argv
        context.secret_names,
        env_values,
    )
    return RenderedJob(context, manifest, document, carried)


def refuse_url_credentials(overrides: list[str]) -> None:
    """A trainer override is written into the manifest as given: a URL in it must carry no credentials.
    (targets.* overrides are checked, key by key, by the target's settings model.)"""
    for text in overrides:
        key, _, value = text.partition("=")
        found = find_url_credentials(value)
        if found and not key.strip().startswith(PLATFORM_OVERRIDE_PREFIX):
            raise WmtpError(
                f"--set {key.strip()}: a URL with credentials ({found}) would be written into the "
                "manifest in plain text; pass them as secrets (env.secrets) instead"
            )


def submit_job(
    job: RenderedJob, env_file: Optional[Path] = None, server_dry_run: bool = False
) -> tuple[list[str], int]:
    """Send the job to its target; return (lines to print, exit status)."""
    plugin = get_target(job.context.target)
    if server_dry_run and not plugin.server_dry_run:
        able = " / ".join(target.name for target in targets().values() if target.server_dry_run)
        raise WmtpError(f"--server-dry-run is only for --target {able} (the API server validates without creating)")
    return plugin.submit(job, env_file, server_dry_run)
