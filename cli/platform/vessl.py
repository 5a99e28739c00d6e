"""VESSL runs: validate the run YAML against the keys VESSL accepts; submit, status and logs via the SDK.

The SDK (`pip install 'weighted-mtp[vessl]'`) is optional. Facts used here, read from vessl 0.1.199:
`vessl.create_run(yaml_file, yaml_body, yaml_file_name, **kwargs)` returns the run (`.id`,
`.status`) or None when its own YAML check fails (e.g. an unknown cluster); `read_run(run_id)`,
`list_run_logs(run_id, tail)`; the access token comes from VESSL_ACCESS_TOKEN or ~/.vessl/config;
telemetry switches are read from the environment when the package is imported.
"""

from __future__ import annotations

import posixpath
from typing import Any

from cli.platform.context import JobContext
from storage_sync.vessl_telemetry import opt_out_of_vessl_telemetry
from wmtp.errors import WmtpError

TOP_LEVEL_KEYS = {"name", "description", "tags", "resources", "image", "import", "mount", "run", "export",
                  "env", "ports"}
REQUIRED_KEYS = ("name", "image", "resources", "run")
RESOURCE_KEYS = {"cluster", "preset"}
RUN_STEP_KEYS = {"command", "workdir"}
PORT_KEYS = {"name", "type", "port"}
VOLUME_PREFIXES = ("volume://", "git://", "hf://", "s3://", "gs://", "vessl-dataset://", "vessl-model://")


def extra_context(context: JobContext) -> dict[str, Any]:
    """Where output.root lives in the container (exported to the checkpoint volume at the end)."""
    root = context.output_root
    path = root if root.startswith("/") else posixpath.join(context.workdir, root)
    return {"export_path": path.rstrip("/") + "/"}


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


def import_sdk():
    """The `vessl` module with its telemetry opted out, or one line saying how to get it."""
    opt_out_of_vessl_telemetry()  # read at import time by vessl.util.constant
    try:
        import vessl
    except ImportError:
        raise WmtpError("the VESSL SDK is not installed: pip install 'weighted-mtp[vessl]' "
                        "(or use --dry-run / wmtp render to get the run YAML)") from None
    if getattr(vessl.vessl_api, "user", None) is None:
        raise WmtpError("no VESSL access token: set VESSL_ACCESS_TOKEN (e.g. in --env-file) or run `vessl configure`")
    return vessl


def sdk_scope(settings: dict[str, Any]) -> dict[str, str]:
    """organization_name / project_name keyword arguments, when the spec names them."""
    scope = {"organization_name": settings.get("organization"), "project_name": settings.get("project")}
    return {key: value for key, value in scope.items() if value}


def submit(manifest: str, context: JobContext) -> list[str]:
    """Create the run; return the lines that tell the user what was created and how to follow it."""
    vessl = import_sdk()
    try:
        run = vessl.create_run(None, manifest, f"{context.name}.yaml", **sdk_scope(context.settings))
    except Exception as exc:  # the SDK raises its own VesslApiException tree; report it as one line
        raise WmtpError(f"VESSL refused the run: {one_line(exc)}") from None
    if run is None:
        raise WmtpError(f"VESSL refused the run YAML (is cluster {context.settings['cluster']!r} available to you?)")
    return [f"created VESSL run {run.id} ({context.name}), status {run.status}",
            f"follow it: wmtp status {run.id} --target vessl ; wmtp logs {run.id} --target vessl"]


def run_id(name: str) -> int:
    if not name.isdigit():
        raise WmtpError(f"{name!r}: for --target vessl pass the numeric run id printed by `wmtp submit`")
    return int(name)


def status(name: str, settings: dict[str, Any]) -> list[str]:
    vessl, number = import_sdk(), run_id(name)
    try:
        run = vessl.read_run(run_id=number, **sdk_scope(settings))
    except Exception as exc:  # VesslApiException (unknown run, wrong organization) or a network error
        raise WmtpError(f"VESSL could not read run {number}: {one_line(exc)}") from None
    return [f"VESSL run {run.id}: {run.status}"]


def logs(name: str, settings: dict[str, Any], tail: int) -> list[str]:
    vessl, number = import_sdk(), run_id(name)
    try:
        entries = vessl.list_run_logs(run_id=number, tail=tail, **sdk_scope(settings))
    except Exception as exc:
        raise WmtpError(f"VESSL could not read the logs of run {number}: {one_line(exc)}") from None
    return [entry.message for entry in entries]


def one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
