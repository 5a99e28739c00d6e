"""The interface of a job target: everything `wmtp submit / render / status / logs / cancel / ls` need
from one place jobs run.

A target is one module in wmtp_cli/platform/plugins/ that defines a `Target` subclass and an instance of
it named `TARGET`; `registry` finds it there. Besides that module, a target needs its template (when it
renders a manifest) and its block `targets.<spec_key>` in jobs/defaults.yaml.
"""

from __future__ import annotations

import datetime as _dt
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Optional

from pydantic import ValidationError

from wmtp.errors import WmtpError
from wmtp_cli.platform.targets import TargetSettings, describe_error

if TYPE_CHECKING:  # annotations only: importing them here would load the spec machinery for `--help`
    from wmtp_cli.platform.context import JobContext, RenderedJob


@dataclass(frozen=True)
class JobRow:
    """One job in `wmtp ls`: `ref` is what status / logs / cancel take (the VESSL run id, else the name)."""

    ref: str
    name: str
    status: str
    created: Optional[_dt.datetime]  # timezone-aware; None when the target does not say


class Target(ABC):
    """One place jobs run: its settings, its manifest, and the job lifecycle there."""

    name: ClassVar[str]  # the --target value: the module's name, `_` written `-`
    summary: ClassVar[str]  # what it does: docs/platform.md's targets table, second column
    needs: ClassVar[str]  # what it needs: that table's third column
    settings_model: ClassVar[Optional[type[TargetSettings]]] = None  # targets.<spec_key>; None: no settings
    template: ClassVar[Optional[str]] = None  # "folder/file.j2" among the shipped assets; None: no manifest
    in_container: ClassVar[bool] = True  # runs the trainer image, which has only the shipped jobs/
    job_ref: ClassVar[str] = "job name"  # what status / logs / cancel take, for help texts
    env_file_credentials: ClassVar[bool] = False  # its SDK reads credentials (tokens, KUBECONFIG) from --env-file
    server_dry_run: ClassVar[bool] = False  # the API can validate a job without creating it
    # status / logs / cancel / ls find its jobs; False for a foreground target (registry.FOREGROUND lists them)
    tracks_jobs: ClassVar[bool] = True

    @property
    def spec_key(self) -> str:
        """The key of this target's block under `targets:` in a spec (`local-docker` → `local_docker`)."""
        return self.name.replace("-", "_")

    def settings(self, targets: dict[str, Any]) -> Optional[TargetSettings]:
        """Validate `targets.<spec_key>` of a spec; a bad value is one line naming its key path."""
        if self.settings_model is None:
            return None
        raw = targets.get(self.spec_key)
        if not isinstance(raw, dict):
            raise WmtpError(f"targets.{self.spec_key}: missing from the spec (jobs/defaults.yaml defines it)")
        try:
            return self.settings_model.model_validate(raw)
        except ValidationError as exc:
            raise WmtpError(describe_error(exc, f"targets.{self.spec_key}")) from None

    # ------------------------------------------------------------ the manifest

    def extra_context(self, context: JobContext, env_file: Optional[Path]) -> dict[str, Any]:
        """Values the template needs beyond the job context (host paths, derived URIs)."""
        return {}

    def template_filters(self) -> dict[str, Any]:
        """Jinja filters that replace the shared ones for this template (e.g. another quoting)."""
        return {}

    def render(self, context: JobContext, env_file: Optional[Path]) -> str:
        """The manifest text: the template rendered with the context."""
        from wmtp_cli.platform.render import render_manifest

        return render_manifest(self.template, context, self.extra_context(context, env_file), self.template_filters())

    def parse(self, manifest: str) -> Any:
        """The manifest as data (what the API receives), or None when it is not a document."""
        from wmtp_cli.platform.render import parse_manifest

        return parse_manifest(manifest, self.template)

    def validate(self, document: Any, manifest: str, context: JobContext) -> None:
        """Refuse what the user chose that cannot work here (settings against the spec). Our templates'
        own invariants are checked by the tests (tests/template_rules.py), not on every submit."""
        return None  # a hook: by default a target refuses nothing

    def submit_refusal(self, context: JobContext) -> Optional[str]:
        """Why `submit` would refuse this job as it is, or None; `--dry-run` / `render` warn with it."""
        return None

    def starting_line(self, job: RenderedJob) -> Optional[str]:
        """A line to print before `submit` starts (a job in the foreground says what it runs)."""
        return None

    # ------------------------------------------------------------ the lifecycle

    @abstractmethod
    def submit(self, job: RenderedJob, env_file: Optional[Path], server_dry_run: bool) -> tuple[list[str], int]:
        """Start the job; return (lines that say what was created and how to follow it, exit status)."""

    @abstractmethod
    def status(self, ref: str, settings: dict[str, Any]) -> list[str]:
        """Where the job stands."""

    @abstractmethod
    def logs(self, ref: str, settings: dict[str, Any], tail: int, follow: bool) -> Iterable[str]:
        """The trainer's last `tail` lines; with `follow`, then its new lines as they come, until it ends."""

    @abstractmethod
    def cancel(self, ref: str, settings: dict[str, Any]) -> list[str]:
        """Stop the job and remove what runs it; return what was done."""

    @abstractmethod
    def list_jobs(self, settings: dict[str, Any]) -> list[JobRow]:
        """The jobs this tool submitted here (found by the labels, tags or names our templates set)."""


def not_available(action: str, target: str, why: str) -> WmtpError:
    """One line for a lifecycle command a target has no use for."""
    return WmtpError(f"{action} is not available for --target {target}: {why}")


def age(created: Optional[_dt.datetime], now: Optional[_dt.datetime] = None) -> str:
    """How long ago `created` was, in its largest unit (`45s`, `12m`, `3h`, `2d`); `?` when unknown."""
    if created is None:
        return "?"
    if created.tzinfo is None:  # an API that gives naive times gives UTC
        created = created.replace(tzinfo=_dt.timezone.utc)
    seconds = max(0, int(((now or _dt.datetime.now(_dt.timezone.utc)) - created).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
