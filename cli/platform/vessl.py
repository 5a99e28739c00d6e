"""VESSL runs: validate the run YAML against the keys VESSL accepts; submit, status and logs via the SDK.

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
- `read_run(run_id)`, `list_run_logs(run_id, tail)`; the access token comes from VESSL_ACCESS_TOKEN or
  ~/.vessl/config; telemetry switches are read from the environment when the package is imported.
"""

from __future__ import annotations

import os
import posixpath
from typing import Any, Optional

from wmtp_cli.platform.context import JobContext
from wmtp_cli.platform.net import display_url, unreachable_cause
from wmtp_storage_sync.vessl_telemetry import opt_out_of_vessl_telemetry
from wmtp.errors import WmtpError

TOP_LEVEL_KEYS = {"name", "description", "tags", "resources", "image", "import", "mount", "run", "export",
                  "env", "ports"}
REQUIRED_KEYS = ("name", "image", "resources", "run")
RESOURCE_KEYS = {"cluster", "preset"}
RUN_STEP_KEYS = {"command", "workdir"}
PORT_KEYS = {"name", "type", "port"}
VOLUME_PREFIXES = ("volume://", "git://", "hf://", "s3://", "gs://", "vessl-dataset://", "vessl-model://")


TRACKING_SECRET = "MLFLOW_TRACKING_URI"
REMOTE_HINT = (f"set targets.vessl.mlflow_uri=https://… (or add {TRACKING_SECRET} to env.secrets, a VESSL "
               "secret), or keep the store with the checkpoints: --set targets.vessl.local_tracking=true")


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
    sources = [label for label, present in (
        ("targets.vessl.mlflow_uri", settings.get("mlflow_uri")),
        ("targets.vessl.local_tracking", settings.get("local_tracking")),
        (f"{TRACKING_SECRET} in env.secrets", TRACKING_SECRET in secret_names)) if present]
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
    through_env = bool(settings.get("mlflow_uri") or settings.get("local_tracking")
                       or TRACKING_SECRET in context.secret_names)
    exported = export_path(context)
    for stage, uri in context.tracking_uris.items():
        if uri is None:  # the trainer falls back to $MLFLOW_TRACKING_URI, else storage/mlflow in the container
            if through_env:
                continue
            return ("no MLflow tracking server for the VESSL run: the trainer would write an sqlite store inside "
                    f"the container, which is never exported; {REMOTE_HINT}")
        path = container_store_path(uri, context.workdir)
        if path is not None and not (path + "/").startswith(exported):
            return (f"tracking.uri ({stage}): the store {path} is inside the VESSL container but not under "
                    f"output.root ({exported}, the only exported dir); point it at a tracking server "
                    f"(https://…) or at a path under {exported}, or unset it and {REMOTE_HINT}")
    return None


def validate_run_yaml(doc: Any) -> None:
    """Raise one line for the first key or value VESSL's run YAML does not accept."""
    problem = first_problem(doc)
    if problem:
        raise WmtpError(f"VESSL run YAML: {problem}")


def first_problem(doc: Any) -> str | None:
    if not isinstance(doc, dict):
        return "expected a mapping at the top level"
    unknown = sorted(set(doc) - TOP_LEVEL_KEYS)
    if unknown:
        return f"{unknown[0]}: not a VESSL run key (allowed: {', '.join(sorted(TOP_LEVEL_KEYS))})"
    for key in REQUIRED_KEYS:
        if not doc.get(key):
            return f"{key}: required"
    checks = [check_metadata(doc), check_resources(doc["resources"]), check_image(doc["image"]),
              check_run(doc["run"]), check_env(doc.get("env")), check_ports(doc.get("ports"))]
    checks += [check_volumes(section, doc[section]) for section in ("import", "mount", "export") if section in doc]
    return next((problem for problem in checks if problem), None)


def check_metadata(doc: dict) -> str | None:
    if not isinstance(doc["name"], str):
        return "name: expected a string"
    if "description" in doc and not isinstance(doc["description"], str):
        return "description: expected a string"
    tags = doc.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        return "tags: expected a list of strings"
    return None


def check_resources(resources: Any) -> str | None:
    if not isinstance(resources, dict):
        return "resources: expected a mapping {cluster, preset}"
    unknown = sorted(set(resources) - RESOURCE_KEYS)
    if unknown:
        return f"resources.{unknown[0]}: not a resources key (allowed: cluster, preset)"
    for key in RESOURCE_KEYS:
        if not isinstance(resources.get(key), str) or not resources[key]:
            return f"resources.{key}: expected a non-empty string"
    return None


def check_image(image: Any) -> str | None:
    if isinstance(image, dict):
        image = image.get("url")
    return None if isinstance(image, str) and image.strip() else "image: expected an image URL"


def check_run(run: Any) -> str | None:
    if not isinstance(run, list) or not run:
        return "run: expected a list of {command, workdir}"
    for index, step in enumerate(run):
        where = f"run[{index}]"
        if not isinstance(step, dict):
            return f"{where}: expected a mapping {{command, workdir}}"
        unknown = sorted(set(step) - RUN_STEP_KEYS)
        if unknown:
            return f"{where}.{unknown[0]}: not a run key (allowed: command, workdir)"
        if not isinstance(step.get("command"), str) or not step["command"].strip():
            return f"{where}.command: expected a non-empty string"
        if "workdir" in step and not (isinstance(step["workdir"], str) and step["workdir"].startswith("/")):
            return f"{where}.workdir: expected an absolute path"
    return None


def check_env(env: Any) -> str | None:
    if env is None:
        return None
    if not isinstance(env, dict):
        return "env: expected a mapping NAME: value or NAME: {secret: NAME}"
    for key, value in env.items():
        if isinstance(value, dict):
            if set(value) != {"secret"} or not isinstance(value["secret"], str):
                return f"env.{key}: expected {{secret: NAME}}"
        elif not isinstance(value, str):
            return f"env.{key}: expected a string value or {{secret: NAME}} (got {type(value).__name__})"
    return None


def check_volumes(section: str, volumes: Any) -> str | None:
    if not isinstance(volumes, dict):
        return f"{section}: expected a mapping /container/path: source"
    for path, source in volumes.items():
        where = f"{section}.{path}"
        if not isinstance(path, str) or not path.startswith("/"):
            return f"{where}: expected an absolute container path"
        if isinstance(source, dict) and section == "import" and set(source) == {"git"}:
            if not isinstance(source["git"], dict) or not source["git"].get("url"):
                return f"{where}.git.url: required"
        elif not (isinstance(source, str) and source.startswith(VOLUME_PREFIXES)):
            return f"{where}: expected a source starting with one of {', '.join(VOLUME_PREFIXES)}"
    return None


def check_ports(ports: Any) -> str | None:
    if ports is None:
        return None
    if not isinstance(ports, list) or not all(isinstance(p, dict) and set(p) <= PORT_KEYS for p in ports):
        return "ports: expected a list of {name, type, port}"
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
        raise WmtpError("the VESSL SDK is not installed: pip install 'weighted-mtp[vessl]' "
                        "(or use --dry-run / wmtp render to get the run YAML)") from None
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
        raise WmtpError(f"VESSL: {describe(exc)}: set targets.vessl.organization and targets.vessl.project "
                        "(or `vessl configure`)") from None


def describe(exc: BaseException) -> str:
    """An SDK failure in one line: the API's own message, or why the API could not be reached."""
    from urllib3.exceptions import HTTPError

    if isinstance(exc, HTTPError):
        return f"cannot reach the VESSL API at {api_host()}: {unreachable_cause(exc)}"
    return one_line(exc)


def submit(manifest: str, context: JobContext) -> list[str]:
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
        raise WmtpError(f"VESSL could not list the clusters of organization {scope['organization_name']!r}: "
                        f"{describe(exc)}") from None
    if cluster not in clusters:
        raise WmtpError(f"targets.vessl.cluster: {cluster!r} is not a cluster of VESSL organization "
                        f"{scope['organization_name']!r} (available: {', '.join(clusters) or 'none'})")
    try:
        created = vessl.vessl_api.run_spec_create_from_yamlapi(
            organization_name=scope["organization_name"], project_name=scope["project_name"],
            run_spec_create_from_yamlapi_input={"yaml_spec": manifest})
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
    if not name.isdigit():
        raise WmtpError(f"{name!r}: for --target vessl pass the numeric run id printed by `wmtp submit`")
    return int(name)


def status(name: str, settings: dict[str, Any]) -> list[str]:
    vessl, number = import_sdk(), run_id(name)
    try:
        run = vessl.read_run(run_id=number, **sdk_scope(settings))
    except Exception as exc:  # VesslApiException (unknown run, wrong organization) or a network error
        raise WmtpError(f"VESSL could not read run {number}: {describe(exc)}") from None
    return [f"VESSL run {run.id}: {run.status}"]


def logs(name: str, settings: dict[str, Any], tail: int) -> list[str]:
    vessl, number = import_sdk(), run_id(name)
    try:
        entries = vessl.list_run_logs(run_id=number, tail=tail, **sdk_scope(settings))
    except Exception as exc:
        raise WmtpError(f"VESSL could not read the logs of run {number}: {describe(exc)}") from None
    return [entry.message for entry in entries]


def one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
