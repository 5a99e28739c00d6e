"""A plain directory as the destination (another disk, an NFS mount, a mounted volume)."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Iterable, Optional

from wmtp.common.files import atomic_output
from wmtp_storage_sync.backends.base import (
    Backend,
    FileChangedError,
    ObjectInfo,
    OnBytes,
    RemoteObject,
    check_unchanged,
)
from wmtp_storage_sync.errors import SyncError
from wmtp_storage_sync.manifest import (
    HASH_CHUNK,
    MANIFEST_NAME,
    PARTIAL_SUFFIX,
    FileEntry,
    LocalFile,
    Manifest,
    scan_local,
    sha256_file,
)


def _etag(stat: os.stat_result) -> str:
    # A directory has no content hash to offer cheaply; size + mtime changes whenever a file is rewritten.
    return f"{stat.st_size}-{stat.st_mtime_ns}"


class LocalDirBackend(Backend):
    def __init__(self, root: Path):
        self.root = root
        self.url = str(root)

    def _path(self, rel: str) -> Path:
        return self.root / rel

    def list_objects(self, selection: Iterable[str]) -> dict[str, RemoteObject]:
        if not self.root.exists():
            return {}
        found = scan_local(self.root, list(selection))
        return {rel: RemoteObject(f.size, f"{f.size}-{f.mtime_ns}") for rel, f in found.items()}

    def head(self, rel: str) -> Optional[ObjectInfo]:
        path = self._path(rel)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        # No metadata store here: the "recorded" hash is the content's own, read from local disk.
        return ObjectInfo(stat.st_size, _etag(stat), sha256_file(path))

    def upload(self, f: LocalFile, sha256: Optional[str], on_bytes: OnBytes) -> ObjectInfo:
        """Copy to a temp file beside the target while hashing, compare with the manifest hash (if the
        engine had one), then rename; the hash of the copied bytes is what the manifest records.

        Not `atomic_output`: a transfer in flight is named with PARTIAL_SUFFIX, as the engine names a
        download, so both directions leave the same kind of fragment that listings skip."""
        dest = self._path(f.rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}")
        try:
            written = _copy_hashing(f.path, tmp, on_bytes)
            check_unchanged(f)
            if sha256 is not None and written != sha256:
                raise FileChangedError(f"{f.path}: content no longer matches its hash; re-run the sync")
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        stat = dest.stat()
        if stat.st_size != f.size:
            raise SyncError(f"{dest}: size {stat.st_size} after copy, expected {f.size}")
        return ObjectInfo(stat.st_size, _etag(stat), written)

    def download(self, rel: str, entry: FileEntry, dest: Path, on_bytes: OnBytes) -> None:
        source = self._path(rel)
        if not source.is_file():
            raise SyncError(f"{source}: listed in the manifest but missing")
        _copy_hashing(source, dest, on_bytes)

    def read_sha256(self, rel: str) -> str:
        return sha256_file(self._path(rel))

    def delete(self, rels: list[str]) -> None:
        for rel in rels:
            self._path(rel).unlink(missing_ok=True)

    def read_manifest(self) -> Optional[Manifest]:
        path = self.root / MANIFEST_NAME
        if not path.exists():
            return None
        return Manifest.from_bytes(path.read_bytes(), str(path))

    def write_manifest(self, manifest: Manifest) -> None:
        with atomic_output(self.root / MANIFEST_NAME) as out:
            out.write(manifest.to_bytes())


def _copy_hashing(source: Path, dest: Path, on_bytes: OnBytes) -> str:
    digest = hashlib.sha256()
    with open(source, "rb", buffering=0) as src, open(dest, "wb") as out:
        while chunk := src.read(HASH_CHUNK):
            digest.update(chunk)
            out.write(chunk)
            on_bytes(len(chunk))
    return digest.hexdigest()
