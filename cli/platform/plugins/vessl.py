"""--target vessl: a VESSL run from vessl/run.yaml.j2; submit, status, logs, terminate and list via the SDK.

The SDK (`pip install 'weighted-mtp[vessl]'`) is optional. Facts used here, read from vessl 0.1.199:
- `import vessl` builds its API client and, when it finds a token, asks the API who the user is: an
  unreachable API raises urllib3's MaxRetryError out of the import itself;
- `vessl.create_run(…, organization_name=, project_name=)` does not pass them on to its own cluster
  check (`list_clusters()`) nor to the `read_run(run_id)` after creating, so with another default
  organization it creates the run and then fails on "not found". We make the same three calls
  ourselves, each with the organization and project: `list_clusters(organization_name=)`,
  `vessl_api.run_spec_create_from_yamlapi(organization_name, project_name, run_spec_create_from_yamlapi_input=
  {"yaml_spec": …})` (what create_run sends) and `read_run(run_id, organization_name=, project_name=)`;
- defaults come from `vessl.organization._get_organization_name(**kw)` / `vessl.project._get_project_name(**kw)`
  (~/.vessl/config or `vessl configure`), the helpers create_run itself uses;
- `read_run(run_id)`, `list_run_logs(run_id, tail, after)` (entries with `.message` and `.timestamp`;
  `after` a timestamp, tail -1 = all), `terminate_run(run_id)`, `list_runs()` (entries with `.id`,
  `.status`, `.create_dt` and `.run_spec.title`, the run YAML's name, as `vessl run list` prints them;
  `.run_spec.description` is read where present), `vessl run logs --follow` polls list_run_logs with
  `after` while read_run says pending / running; each takes `**kwargs` for the
  organization / project; the access token comes from VESSL_ACCESS_TOKEN or ~/.vessl/config; telemetry
  switches are read from the environment when the package is imported.

The run YAML's keys are our template's: tests/template_rules.py checks them against what VESSL accepts.
"""

from __future__ import annotations

import os
import posixpath
import time
from typing import TYPE_CHECKING, Any, Iterator, Optional

from wmtp.errors import WmtpError
from wmtp_cli.platform.net import display_url, unreachable_cause
from wmtp_cli.platform.target import JobRow, Target
from wmtp_cli.platform.targets import GitRef, GitUrl, HttpUrl, ImageRef, PlainName, TargetSettings, VesslVolume
from wmtp_storage_sync.vessl_telemetry import opt_out_of_vessl_telemetry

if TYPE_CHECKING:
    from wmtp_cli.platform.context import JobContext, RenderedJob


class VesslSettings(TargetSettings):
    """A VESSL run: one node of `preset` in `cluster`; storage imported from and checkpoints exported to volumes."""

    image: ImageRef
    cluster: PlainName
    preset: PlainName
    storage_volume: VesslVolume  # imported at /data/storage (models_v2/, datasets_v2/)
    checkpoint_volume: VesslVolume  # output.root is exported here when the run ends
    code_repo: Optional[GitUrl] = None  # git import at /code (first on PYTHONPATH); None = the image's code
    code_ref: GitRef = "main"
    mlflow_uri: Optional[HttpUrl] = None  # plain MLFLOW_TRACKING_URI; None: a secret or local_tracking must name one
    # True: MLflow writes an sqlite store under output.root, exported with the checkpoints (no server needed).
    local_tracking: bool = False
    organization: Optional[PlainName] = None  # None = the SDK's configured default
    project: Optional[PlainName] = None


TRACKING_SECRET = "MLFLOW_TRACKING_URI"
REMOTE_HINT = (
    f"set targets.vessl.mlflow_uri=https://… (or add {TRACKING_SECRET} to env.secrets, a VESSL "
    "secret), or keep the store with the checkpoints: --set targets.vessl.local_tracking=true"
)


def export_path(context: JobContext) -> str:
    """output.root as a container path ending in "/": exported to the checkpoint volume when the run ends."""
    root = context.output_root
    path = root if root.startswith("/") else posixpath.join(context.workdir, root)
    return posixpath.normpath(path) + "/"


def local_tracking_uri(context: JobContext) -> str:
    """targets.vessl.local_tracking: an sqlite store beside the run dir, under the exported output.root
    (one per job, so two jobs exported to the same volume never overwrite each other's store)."""
    return f"sqlite:///{export_path(context)}{context.name}-mlflow/mlflow.db"


def extra_context(context: JobContext) -> dict[str, Any]:
    """Where output.root lives in the container (exported at the end) and the local tracking store."""
    conflict = tracking_conflict(context.settings, context.secret_names)
    if conflict:
        raise WmtpError(conflict)
    return {"export_path": export_path(context), "local_tracking_uri": local_tracking_uri(context)}


def tracking_conflict(settings: dict[str, Any], secret_names: list[str]) -> Optional[str]:
    """Two settings that would both write MLFLOW_TRACKING_URI into the run's env (a duplicate YAML key)."""
    sources = [
        label
        for label, present in (
            ("targets.vessl.mlflow_uri", settings.get("mlflow_uri")),
            ("targets.vessl.local_tracking", settings.get("local_tracking")),
            (f"{TRACKING_SECRET} in env.secrets", TRACKING_SECRET in secret_names),
        )
        if present
    ]
    if len(sources) > 1:
        return f"{' and '.join(sources)} both set {TRACKING_SECRET} for the VESSL run; keep one"
    return None


def container_store_path(uri: str, workdir: str) -> Optional[str]:
    """The container path of a file-based MLflow store URI (sqlite:///…, file:…, a plain path), made
    absolute against the trainer's working dir; None for a server (http(s)://, databricks, postgresql…)."""
    if uri in ("databricks", "databricks-uc"):  # MLflow's names for a Databricks workspace: a server
        return None
    scheme, sep, rest = uri.partition(":")
    if not sep or scheme in ("", "file") or len(scheme) == 1:
        path = rest if scheme == "file" else uri
        path = path[2:] if path.startswith("//") else path  # file://PATH
    elif scheme == "sqlite":
        path = rest[3:] if rest.startswith("///") else rest.lstrip("/")  # sqlite:///rel, sqlite:////abs
    else:
        return None
    return posixpath.normpath(posixpath.join(workdir, path))


def tracking_problem(context: JobContext) -> Optional[str]:
    """Why the run's MLflow data would be lost, or None: the trainer's store must be a server, or a
    file store under the exported output.root (targets.vessl.local_tracking, or such a tracking.uri)."""
    settings = context.settings
    through_env = bool(
        settings.get("mlflow_uri") or settings.get("local_tracking") or TRACKING_SECRET in context.secret_names
    )
    exported = export_path(context)
    for stage, uri in context.tracking_uris.items():
        if uri is None:  # the trainer falls back to $MLFLOW_TRACKING_URI, else storage/mlflow in the container
            if through_env:
                continue
            return (
                "no MLflow tracking server for the VESSL run: the trainer would write an sqlite store inside "
                f"the container, which is never exported; {REMOTE_HINT}"
            )
        path = container_store_path(uri, context.workdir)
        if path is not None and not (path + "/").startswith(exported):
            return (
                f"tracking.uri ({stage}): the store {path} is inside the VESSL container but not under "
                f"output.root ({exported}, the only exported dir); point it at a tracking server "
                f"(https://…) or at a path under {exported}, or unset it and {REMOTE_HINT}"
            )
    return None


# ---------------------------------------------------------------- the SDK


def api_host() -> str:
    """The VESSL API the SDK talks to (VESSL_API_HOST, else its production default), as it may be printed."""
    default = "https://api.vessl.ai" if os.environ.get("VESSL_ENV", "prod") == "prod" else "https://api.dev.vssl.ai"
    return display_url(os.environ.get("VESSL_API_HOST") or default)


def import_sdk():
    """The `vessl` module with its telemetry opted out, or one line saying how to get it or why it failed."""
    opt_out_of_vessl_telemetry()  # read at import time by vessl.util.constant
    try:
        import vessl
    except ImportError:
        raise WmtpError(
            "the VESSL SDK is not installed: pip install 'weighted-mtp[vessl]' "
            "(`wmtp submit … --dry-run` and `wmtp render` give the run YAML without it)"
        ) from None
    except Exception as exc:  # the import itself calls the API (who is this token?); urllib3 gives up
        raise WmtpError(f"cannot reach the VESSL API at {api_host()}: {unreachable_cause(exc)}") from None
    if getattr(vessl.vessl_api, "user", None) is None:
        raise WmtpError("no VESSL access token: set VESSL_ACCESS_TOKEN (e.g. in --env-file) or run `vessl configure`")
    return vessl


def sdk_scope(settings: dict[str, Any]) -> dict[str, str]:
    """organization_name / project_name keyword arguments, when the spec names them."""
    scope = {"organization_name": settings.get("organization"), "project_name": settings.get("project")}
    return {key: value for key, value in scope.items() if value}


def resolved_scope(vessl, settings: dict[str, Any]) -> dict[str, str]:
    """Both names, the spec's or else the SDK's defaults, so that every call of one submit goes to the
    same organization and project (see the module docstring for why create_run is not used)."""
    from vessl.organization import _get_organization_name
    from vessl.project import _get_project_name

    scope = sdk_scope(settings)
    try:
        return {"organization_name": _get_organization_name(**scope), "project_name": _get_project_name(**scope)}
    except Exception as exc:  # InvalidOrganizationError / InvalidProjectError: nothing configured
        raise WmtpError(
            f"VESSL: {describe(exc)}: set targets.vessl.organization and targets.vessl.project (or `vessl configure`)"
        ) from None


def describe(exc: BaseException) -> str:
    """An SDK failure in one line: the API's own message, or why the API could not be reached."""
    from urllib3.exceptions import HTTPError

    if isinstance(exc, HTTPError):
        return f"cannot reach the VESSL API at {api_host()}: {unreachable_cause(exc)}"
    return one_line(exc)


def create_run(manifest: str, context: JobContext) -> list[str]:
    """Create the run; return the lines that tell the user what was created and how to follow it."""
    problem = tracking_problem(context)
    if problem:
        raise WmtpError(problem)
    vessl = import_sdk()
    scope = resolved_scope(vessl, context.settings)
    where = f"{scope['organization_name']}/{scope['project_name']}"
    cluster = context.settings["cluster"]
    try:
        clusters = [entry.name for entry in vessl.list_clusters(organization_name=scope["organization_name"])]
    except Exception as exc:  # VesslApiException (e.g. unknown organization) or a network error
        raise WmtpError(
            f"VESSL could not list the clusters of organization {scope['organization_name']!r}: {describe(exc)}"
        ) from None
    if cluster not in clusters:
        raise WmtpError(
            f"targets.vessl.cluster: {cluster!r} is not a cluster of VESSL organization "
            f"{scope['organization_name']!r} (available: {', '.join(clusters) or 'none'})"
        )
    try:
        created = vessl.vessl_api.run_spec_create_from_yamlapi(
            organization_name=scope["organization_name"],
            project_name=scope["project_name"],
            run_spec_create_from_yamlapi_input={"yaml_spec": manifest},
        )
    except Exception as exc:  # the SDK raises its own VesslApiException tree; report it as one line
        raise WmtpError(f"VESSL refused the run in {where}: {describe(exc)}") from None
    number = created.run_execution.id
    follow = f"follow it: wmtp status {number} --target vessl ; wmtp logs {number} --target vessl"
    try:
        state = vessl.read_run(run_id=number, **scope).status
    except Exception as exc:  # the run exists: report it, so that nobody retries into a duplicate
        state = f"unknown (reading it failed: {describe(exc)})"
    return [f"created VESSL run {number} ({context.name}) in {where}, status {state}", follow]


def run_id(name: str) -> int:
    """The run id a lifecycle command was given; VESSL knows runs by number, not by name."""
    if not name.isdigit():
        raise WmtpError(
            f"{name!r}: for --target vessl pass the numeric run id printed by `wmtp submit` "
            "(or `wmtp ls --target vessl`)"
        )
    return int(name)


def status(name: str, settings: dict[str, Any]) -> list[str]:
    """`VESSL run ID: status`."""
    vessl, number = import_sdk(), run_id(name)
    try:
        run = vessl.read_run(run_id=number, **sdk_scope(settings))
    except Exception as exc:  # VesslApiException (unknown run, wrong organization) or a network error
        raise WmtpError(f"VESSL could not read run {number}: {describe(exc)}") from None
    return [f"VESSL run {run.id}: {run.status}"]


# `vessl run logs --follow` polls while the run is pending or running; queued / initializing come first.
ACTIVE_STATES = ("queued", "pending", "initializing", "running")
POLL_INTERVAL_S = 3.0  # the SDK's own CLI polls every 3 s


def logs(name: str, settings: dict[str, Any], tail: int, follow: bool = False) -> Iterator[str]:
    """The run's last `tail` log lines; with `follow`, then its new lines until it is no longer active."""
    vessl, number = import_sdk(), run_id(name)
    scope = sdk_scope(settings)
    entries = read_logs(vessl, number, scope, tail=tail)
    yield from (entry.message for entry in entries)
    after = entries[-1].timestamp if entries else 0.0
    while follow:
        follow = run_state(vessl, number, scope) in ACTIVE_STATES
        if follow:
            time.sleep(POLL_INTERVAL_S)
        # Read after the state: once it says ended, this read has the run's last lines.
        entries = read_logs(vessl, number, scope, tail=-1, after=after + 1e-6)
        yield from (entry.message for entry in entries)
        after = entries[-1].timestamp if entries else after


def read_logs(vessl, number: int, scope: dict[str, str], **window) -> list:
    """One `list_run_logs` call (tail, after), its failure one line."""
    try:
        return list(vessl.list_run_logs(run_id=number, **window, **scope))
    except Exception as exc:
        raise WmtpError(f"VESSL could not read the logs of run {number}: {describe(exc)}") from None


def run_state(vessl, number: int, scope: dict[str, str]) -> str:
    """The run's status now (queued, pending, running, completed, failed, terminated…)."""
    try:
        return str(vessl.read_run(run_id=number, **scope).status)
    except Exception as exc:
        raise WmtpError(f"VESSL could not read run {number}: {describe(exc)}") from None


def terminate(name: str, settings: dict[str, Any]) -> list[str]:
    """`vessl.terminate_run`: VESSL stops the run's container (its export still runs)."""
    vessl, number = import_sdk(), run_id(name)
    try:
        run = vessl.terminate_run(run_id=number, **sdk_scope(settings))
    except Exception as exc:
        raise WmtpError(f"VESSL could not terminate run {number}: {describe(exc)}") from None
    state = getattr(run, "status", None)
    return [f"terminated VESSL run {number}" + (f", status {state}" if state else "")]


# Our runs: named by the template from the job name, `wmtp-…` by default, and described `wmtp EXP: stages`.
OWN_NAME_PREFIX = "wmtp-"
OWN_DESCRIPTION_PREFIX = "wmtp "


def list_runs(settings: dict[str, Any]) -> list[JobRow]:
    """The project's runs that this tool submitted (by the name / description our template gives them)."""
    vessl = import_sdk()
    try:
        runs = vessl.list_runs(**sdk_scope(settings))
    except Exception as exc:
        raise WmtpError(f"VESSL could not list the runs: {describe(exc)}") from None
    rows = []
    for run in runs:
        spec = getattr(run, "run_spec", None)
        title = str(getattr(spec, "title", "") or "")
        description = str(getattr(spec, "description", "") or "")
        if title.startswith(OWN_NAME_PREFIX) or description.startswith(OWN_DESCRIPTION_PREFIX):
            rows.append(JobRow(str(run.id), title or "?", str(run.status), getattr(run, "create_dt", None)))
    return rows


def one_line(exc: Exception) -> str:
    """An exception's text on one line (its type when it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__


class VesslTarget(Target):
    name = "vessl"
    summary = (
        "a VESSL run YAML (`vessl/run.yaml.j2`): `resources{cluster, preset}`, the image, code from git at "
        "`/code`, the storage volume imported at `/data/storage`, `output.root` exported to the checkpoint "
        "volume; the cluster checked, the run created from the YAML and its status read, each call in "
        "`targets.vessl.organization`/`project` (else the SDK's defaults), telemetry opted out; MLflow must "
        "outlive the container (below)"
    )
    needs = "`pip install 'weighted-mtp[vessl]'`, `VESSL_ACCESS_TOKEN` or `vessl configure`"
    settings_model = VesslSettings
    template = "vessl/run.yaml.j2"
    job_ref = "run id"
    env_file_credentials = True

    def extra_context(self, context: JobContext, env_file) -> dict[str, Any]:
        return extra_context(context)

    def submit_refusal(self, context: JobContext) -> Optional[str]:
        return tracking_problem(context)

    def submit(self, job: RenderedJob, env_file, server_dry_run: bool) -> tuple[list[str], int]:
        return create_run(job.manifest, job.context), 0

    def status(self, ref: str, settings: dict[str, Any]) -> list[str]:
        return status(ref, settings)

    def logs(self, ref: str, settings: dict[str, Any], tail: int, follow: bool) -> Iterator[str]:
        return logs(ref, settings, tail, follow)

    def cancel(self, ref: str, settings: dict[str, Any]) -> list[str]:
        return terminate(ref, settings)

    def list_jobs(self, settings: dict[str, Any]) -> list[JobRow]:
        return list_runs(settings)


TARGET = VesslTarget()
