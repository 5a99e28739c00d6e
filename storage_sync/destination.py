"""Parse `--dest`: `s3://bucket/prefix`, `vessl://STORAGE/VOLUME[/sub/path]`, or a local directory."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from wmtp_storage_sync.errors import SyncError

# S3 bucket naming rules: 3–63 characters, lowercase letters, digits, dots and hyphens,
# starting and ending with a letter or digit.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_VESSL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # no leading or trailing slash; "" for the bucket's top

    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


@dataclass(frozen=True)
class VesslLocation:
    storage: str
    volume: str
    subpath: str  # inside the volume, no leading or trailing slash

    def url(self) -> str:
        base = f"vessl://{self.storage}/{self.volume}"
        return f"{base}/{self.subpath}" if self.subpath else base


@dataclass(frozen=True)
class LocalLocation:
    path: Path

    def url(self) -> str:
        return str(self.path)


Location = Union[S3Location, VesslLocation, LocalLocation]


def parse_destination(dest: str) -> Location:
    """Turn the `--dest` string into a location, or raise one line naming what is wrong with it."""
    if not dest or not dest.strip():
        raise SyncError("--dest is required: s3://BUCKET/PREFIX, vessl://STORAGE/VOLUME or a local directory")
    match = _SCHEME.match(dest)
    if match is None:
        return LocalLocation(Path(dest).expanduser())
    scheme = match.group(1).lower()
    rest = dest[match.end() :]
    if scheme == "s3":
        return _parse_s3(dest, rest)
    if scheme == "vessl":
        return _parse_vessl(dest, rest)
    if scheme == "file":
        if not rest.startswith("/"):
            raise SyncError(f"--dest {dest!r}: a file:// destination needs an absolute path (file:///dir)")
        return LocalLocation(Path(rest))
    raise SyncError(f"--dest {dest!r}: unsupported scheme {scheme}:// (expected s3://, vessl:// or a local directory)")


def _parse_s3(dest: str, rest: str) -> S3Location:
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET.match(bucket):
        raise SyncError(
            f"--dest {dest!r}: {bucket!r} is not a valid bucket name (3-63 lowercase letters, digits, '.' or '-')"
        )
    return S3Location(bucket, _clean_prefix(dest, prefix))


def _parse_vessl(dest: str, rest: str) -> VesslLocation:
    parts = rest.split("/", 2)
    if len(parts) < 2 or not all(_VESSL_NAME.match(p) for p in parts[:2]):
        raise SyncError(f"--dest {dest!r}: expected vessl://STORAGE/VOLUME[/path] with a storage and a volume name")
    subpath = _clean_prefix(dest, parts[2]) if len(parts) == 3 else ""
    return VesslLocation(parts[0], parts[1], subpath)


def _clean_prefix(dest: str, prefix: str) -> str:
    segments = [s for s in prefix.split("/") if s]
    if any(s in (".", "..") for s in segments):
        raise SyncError(f"--dest {dest!r}: '.' and '..' are not allowed in the key prefix")
    return "/".join(segments)
