"""The interface the sync engine drives; every backend verifies what it writes before returning."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

from wmtp_storage_sync.errors import SyncError
from wmtp_storage_sync.manifest import FileEntry, LocalFile, Manifest

OnBytes = Callable[[int], None]


@dataclass(frozen=True)
class RemoteObject:
    """An object as a listing shows it: cheap to get for thousands of keys at once."""

    size: int
    etag: str


@dataclass(frozen=True)
class ObjectInfo:
    """An object as a HEAD shows it, including the SHA-256 an upload of ours attached (None if absent)."""

    size: int
    etag: str
    sha256: Optional[str]


class FileChangedError(SyncError):
    """The local file changed between hashing and upload: its bytes no longer match the manifest."""


def check_unchanged(f: LocalFile) -> None:
    """Raise if `f` was modified since the scan (the hash we send with it would describe other bytes)."""
    stat = os.stat(f.path)
    if stat.st_size != f.size or stat.st_mtime_ns != f.mtime_ns:
        raise FileChangedError(f"{f.path}: changed during the sync; re-run to upload the new version")


class Backend(ABC):
    """A destination holding one object per synced file plus the manifest, addressed by relative path."""

    url: str  # for messages: never carries credentials

    @abstractmethod
    def list_objects(self, selection: Iterable[str]) -> dict[str, RemoteObject]:
        """Objects under the selected relative paths (the manifest and fragments excluded)."""

    @abstractmethod
    def head(self, rel: str) -> Optional[ObjectInfo]:
        """Size, ETag and recorded SHA-256 of one object; None when it does not exist."""

    @abstractmethod
    def upload(self, f: LocalFile, sha256: Optional[str], on_bytes: OnBytes) -> ObjectInfo:
        """Store `f` under `f.rel` and verify the stored object (size and SHA-256) before returning.

        `sha256` None means the file was not hashed beforehand: the backend hashes the bytes it reads
        for the upload and returns that hash as the `ObjectInfo`'s `sha256` (never None here)."""

    @abstractmethod
    def download(self, rel: str, entry: FileEntry, dest: Path, on_bytes: OnBytes) -> None:
        """Write the object's bytes to `dest` (a temp file; the engine verifies and renames it)."""

    @abstractmethod
    def read_sha256(self, rel: str) -> str:
        """Re-read the stored object and hash it (`--verify`)."""

    @abstractmethod
    def delete(self, rels: list[str]) -> None:
        """Remove objects."""

    @abstractmethod
    def read_manifest(self) -> Optional[Manifest]:
        """The manifest of the last complete sync, or None."""

    @abstractmethod
    def write_manifest(self, manifest: Manifest) -> None:
        """Store the manifest (called last, after every listed object is verified)."""

    def close(self) -> None:
        """Release threads and connections."""
        return None  # a hook: a backend without threads or connections has nothing to release
