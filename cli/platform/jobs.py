"""One pipeline for every target: spec → context → manifest → validate → (submit | status | logs)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from wmtp_cli.envfile import MIN_SCANNED_SECRET_LENGTH, read_env_file, secret_values
from wmtp_cli.platform import compose, k8s, local, vessl
from wmtp_cli.platform.context import PLATFORM_OVERRIDE_PREFIX, JobContext, build_context
from wmtp_cli.platform.names import default_job_name
from wmtp_cli.platform.render import TEMPLATES, parse_manifest, render_manifest
from wmtp_cli.platform.targets import check_target, target_settings, url_credentials
from wmtp.errors import WmtpError


@dataclass
class RenderedJob:
    """A validated manifest ready to print, write or submit."""

    context: JobContext
    manifest: str
    document: Any  # the parsed manifest (None for --target local, whose manifest is a command line)


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

    check_target(target)
    overrides = list(overrides or [])
    refuse_url_credentials(overrides)
    env_values = read_env_file(env_file) if env_file else {}
    resolved = load_experiment(experiment, overrides, preset)
    context = build_context(resolved, experiment, target, name or default_job_name(resolved.name),
                            overrides, preset)
    manifest = render(context, env_file)
    document = None if target == "local" else parse_manifest(manifest, "/".join(TEMPLATES[target]))
    validate(target, document, manifest, context)
    refuse_secret_values(manifest, context.secret_names, env_values)
    return RenderedJob(context, manifest, document)


def render(context: JobContext, env_file: Optional[Path]) -> str:
    if context.target == "local":
        return local.command_line(context)
    if context.target == "vessl":
        return render_manifest(context, vessl.extra_context(context))
    if context.target == "k8s":
        return render_manifest(context)
    return render_manifest(context, compose.extra_context(context, env_file))


def validate(target: str, document: Any, manifest: str, context: JobContext) -> None:
    if target == "vessl":
        vessl.validate_run_yaml(document)
    elif target == "k8s":
        k8s.validate_pytorchjob(document, context)
    elif target == "local-docker":
        compose.validate_compose(document, manifest, context)


def refuse_url_credentials(overrides: list[str]) -> None:
    """A trainer override is written into the manifest as given: a URL in it must carry no credentials.
    (targets.* overrides are checked, key by key, by the target's settings model.)"""
    for text in overrides:
        key, _, value = text.partition("=")
        found = url_credentials(value.strip())
        if found and not key.strip().startswith(PLATFORM_OVERRIDE_PREFIX):
            raise WmtpError(f"--set {key.strip()}: a URL with credentials ({found}) would be written into the "
                            "manifest in plain text; pass them as secrets (env.secrets) instead")


def refuse_secret_values(text: str, names: list[str], env_values: dict[str, str]) -> None:
    """Last line of defence: no secret's value may appear in a manifest (e.g. pasted into --set)."""
    for name, value in secret_values(names, env_values).items():
        if len(value) >= MIN_SCANNED_SECRET_LENGTH and value in text:
            raise WmtpError(f"the manifest would contain the value of secret {name}; secrets are referenced "
                            "by name (env.secrets), never written — remove it from --set")


def submit_job(job: RenderedJob, env_file: Optional[Path] = None, server_dry_run: bool = False) -> tuple[list[str], int]:
    """Send the job to its target; return (lines to print, exit status)."""
    target, context = job.context.target, job.context
    if server_dry_run and target != "k8s":
        raise WmtpError("--server-dry-run is only for --target k8s (the API server validates without creating)")
    if target == "local":
        return [], local.submit(context, env_file)
    if target == "vessl":
        return vessl.submit(job.manifest, context), 0
    if target == "k8s":
        return k8s.submit(job.document, context, server_dry_run), 0
    return compose.submit(job.manifest, context), 0


def job_status(name: str, target: str, overrides: Optional[list[str]] = None) -> list[str]:
    """Where a submitted job stands (k8s API, VESSL SDK, compose)."""
    settings = settings_for(target, overrides)
    if target == "k8s":
        return k8s.status(name, settings)
    if target == "vessl":
        return vessl.status(name, settings)
    if target == "local-docker":
        return compose.status(name)
    raise local.not_tracked("status")


def job_logs(name: str, target: str, tail: int, overrides: Optional[list[str]] = None) -> list[str]:
    """The last `tail` lines a submitted job printed."""
    settings = settings_for(target, overrides)
    if target == "k8s":
        return k8s.logs(name, settings, tail)
    if target == "vessl":
        return vessl.logs(name, settings, tail)
    if target == "local-docker":
        return compose.logs(name, tail)
    raise local.not_tracked("logs")


def settings_for(target: str, overrides: Optional[list[str]]) -> dict[str, Any]:
    """The target's settings from jobs/defaults.yaml ⊕ --set targets.… (e.g. another namespace)."""
    from wmtp.train.config import deep_merge, nest, parse_override, read_yaml
    from wmtp.assets import asset_dir

    check_target(target)
    defaults = read_yaml(asset_dir("jobs") / "defaults.yaml")
    for text in overrides or []:
        defaults = deep_merge(defaults, nest(*parse_override(text)))
    settings = target_settings(target, defaults.get("targets") or {})
    return settings.model_dump() if settings is not None else {}
