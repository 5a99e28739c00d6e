"""Per-target settings (`targets.<target>` in jobs/defaults.yaml ⊕ --set), validated before rendering.

Every value that reaches a template passes through one of these models, so a bad value is one line
naming its key (`targets.k8s.gpus_per_node: …`) instead of a broken or injected manifest.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Optional, Type
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from wmtp.errors import WmtpError

TARGETS = ("vessl", "k8s", "local-docker", "local")
SPEC_KEYS = {"vessl": "vessl", "k8s": "k8s", "local-docker": "local_docker"}  # CLI name → targets.<key>


def matching(pattern: str, expected: str):
    """A string validator: full match of `pattern`, else 'expected <what>'."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"expected {expected}")
        return value

    return AfterValidator(check)


CREDENTIALS_IN_URL = "credentials_in_url"


def url_credentials(value: str) -> Optional[str]:
    """What in `value` looks like a credential: a password (`user:pass@`), or any user in an http(s) URL
    (`https://TOKEN@host` is how tokens are pasted); None when there is none. An ssh user alone is no secret."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return None
    if not parts.scheme or not parts.netloc or "@" not in parts.netloc:
        return None
    userinfo = parts.netloc.rpartition("@")[0]
    if ":" in userinfo:
        return "user:password@"
    if parts.scheme.lower() in ("http", "https"):
        return "user@ or token@"
    return None


def check_no_credentials(value: str) -> str:
    found = url_credentials(value)
    if found:
        # A custom error type, so describe_error does not echo the value (it holds the credential).
        raise PydanticCustomError(CREDENTIALS_IN_URL, "must not contain credentials ({found}); it would be "
                                  "written into the manifest in plain text — pass them as secrets "
                                  "(env.secrets, e.g. MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)",
                                  {"found": found})
    return value


NoCredentials = AfterValidator(check_no_credentials)

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?"
ImageRef = Annotated[str, matching(
    rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[\w][\w.-]{{0,127}})?(?:@sha256:[a-f0-9]{{64}})?",
    "a container image reference like registry/name:tag")]
DnsLabel = Annotated[str, Field(max_length=63), matching(
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", "a DNS-1123 label (lowercase letters, digits, '-')")]
DnsSubdomain = Annotated[str, Field(max_length=253), matching(
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*",
    "a DNS-1123 subdomain (lowercase letters, digits, '-', '.')")]
Quantity = Annotated[str, matching(r"[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?", "a quantity like 64Gi")]
PlainName = Annotated[str, matching(r"[A-Za-z0-9][A-Za-z0-9._-]*", "a name of letters, digits, '.', '_', '-'")]
VesslVolume = Annotated[str, matching(
    r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*", "STORAGE/VOLUME (used as volume://STORAGE/VOLUME)")]
GitUrl = Annotated[str, matching(r"(https://|ssh://|git@)[^\s'\"]+", "a git URL (https://…, ssh://… or git@…)"),
                   NoCredentials]
GitRef = Annotated[str, matching(r"[\w./-]+", "a branch, tag or commit")]
HttpUrl = Annotated[str, matching(r"https?://[^\s'\"]+", "an http(s):// URL"), NoCredentials]
HostPath = Annotated[str, matching(r"[^\x00-\x1f'\"]+", "a path without quotes or control characters")]


class TargetSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


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


class K8sSettings(TargetSettings):
    """A Kubeflow PyTorchJob: `nodes` pods (1 Master + Workers) with `gpus_per_node` GPUs each."""

    image: ImageRef
    namespace: DnsLabel
    nodes: int = Field(ge=1)
    gpus_per_node: int = Field(ge=0)
    pvc: DnsSubdomain  # mounted at /data/storage
    mlflow_secret: DnsSubdomain  # MLFLOW_TRACKING_URI / _USERNAME / _PASSWORD (envFrom)
    env_secret: DnsSubdomain = "wmtp-secrets"  # the other env.secrets names (secretKeyRef, optional)
    shm_size: Quantity = "64Gi"  # /dev/shm emptyDir (Memory)
    clean_pod_policy: Literal["None", "Running", "All"] = "Running"
    backoff_limit: int = Field(3, ge=0)
    ttl_seconds_after_finished: int = Field(7 * 24 * 3600, ge=0)


class LocalDockerSettings(TargetSettings):
    """docker compose on this machine: the trainer plus an MLflow server it reports to."""

    image: ImageRef
    gpus: int = Field(ge=0)
    mlflow_port: int = Field(ge=1, le=65535)
    storage: HostPath = "storage"  # host dir bind-mounted at /data/storage (relative = from the cwd)


SETTINGS_MODELS: dict[str, Type[TargetSettings]] = {
    "vessl": VesslSettings, "k8s": K8sSettings, "local-docker": LocalDockerSettings,
}


def check_target(target: str) -> str:
    """`target` when it is one of TARGETS, else one clear line."""
    if target not in TARGETS:
        raise WmtpError(f"--target {target!r}: expected one of {', '.join(TARGETS)}")
    return target


def target_settings(target: str, targets: dict[str, dict[str, Any]]) -> Optional[TargetSettings]:
    """Validate `targets.<key>` of a spec for `target` (None for `local`, which has no settings)."""
    if target == "local":
        return None
    key = SPEC_KEYS[target]
    raw = targets.get(key)
    if not isinstance(raw, dict):
        raise WmtpError(f"targets.{key}: missing from the spec (jobs/defaults.yaml defines it)")
    try:
        return SETTINGS_MODELS[target].model_validate(raw)
    except ValidationError as exc:
        raise WmtpError(describe_error(exc, f"targets.{key}")) from None


def describe_error(exc: ValidationError, prefix: str) -> str:
    """The first validation error as `prefix.key: what was expected (got value)`."""
    first = exc.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        return f"{prefix}.{key}: unknown key"
    if first["type"] == "missing":
        return f"{prefix}.{key}: required"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == CREDENTIALS_IN_URL:
        return f"{prefix}.{key}: {message}"  # never the value: it holds the credential
    return f"{prefix}.{key}: {message} (got {first['input']!r})"
