"""What per-target settings (`targets.<target>` in jobs/defaults.yaml ⊕ --set) are built from: the value
types every target's settings model uses, and one-line error messages naming the key.

Each target's model lives in its module (wmtp_cli/platform/plugins/); every value that reaches a template
passes through one, so a bad value is one line naming its key (`targets.k8s.gpus_per_node: …`) instead
of a broken or injected manifest.
"""

from __future__ import annotations

import re
from typing import Annotated, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from wmtp_cli.secrets import find_url_credentials


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
    """What in `value` looks like a credential, in a URL anywhere in it: a password (`user:pass@`), or any
    user in an http(s) URL (`https://TOKEN@host`); None when there is none. An ssh user alone is no secret."""
    return find_url_credentials(value)


def check_no_credentials(value: str) -> str:
    found = url_credentials(value)
    if found:
        # A custom error type, so describe_error does not echo the value (it holds the credential).
        raise PydanticCustomError(
            CREDENTIALS_IN_URL,
            "must not contain credentials ({found}); it would be "
            "written into the manifest in plain text — pass them as secrets "
            "(env.secrets, e.g. MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)",
            {"found": found},
        )
    return value


NoCredentials = AfterValidator(check_no_credentials)

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?"
ImageRef = Annotated[
    str,
    matching(
        rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[\w][\w.-]{{0,127}})?(?:@sha256:[a-f0-9]{{64}})?",
        "a container image reference like registry/name:tag",
    ),
]
DnsLabel = Annotated[
    str,
    Field(max_length=63),
    matching(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", "a DNS-1123 label (lowercase letters, digits, '-')"),
]
DnsSubdomain = Annotated[
    str,
    Field(max_length=253),
    matching(
        r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*",
        "a DNS-1123 subdomain (lowercase letters, digits, '-', '.')",
    ),
]
Quantity = Annotated[str, matching(r"[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?", "a quantity like 64Gi")]
PlainName = Annotated[str, matching(r"[A-Za-z0-9][A-Za-z0-9._-]*", "a name of letters, digits, '.', '_', '-'")]
VesslVolume = Annotated[
    str,
    matching(
        r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*", "STORAGE/VOLUME (used as volume://STORAGE/VOLUME)"
    ),
]
GitUrl = Annotated[
    str, matching(r"(https://|ssh://|git@)[^\s'\"]+", "a git URL (https://…, ssh://… or git@…)"), NoCredentials
]
GitRef = Annotated[str, matching(r"[\w./-]+", "a branch, tag or commit")]
HttpUrl = Annotated[str, matching(r"https?://[^\s'\"]+", "an http(s):// URL"), NoCredentials]
HostPath = Annotated[str, matching(r"[^\x00-\x1f'\"]+", "a path without quotes or control characters")]


class TargetSettings(BaseModel):
    """Base of every target's settings model: unknown keys and silently converted types are errors."""

    model_config = ConfigDict(extra="forbid", strict=True)


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
