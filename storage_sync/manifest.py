"""Manifests of (path, size, SHA-256), the local scan, and the hash cache that makes re-scans cheap.

A manifest maps a POSIX path relative to the sync root to a `FileEntry`. The remote copy of the
manifest (`MANIFEST_NAME` at the top of the destination) is written only after every object it lists
has been uploaded and verified, so its presence means "this destination holds a complete sync".
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional

from wmtp.common.files import atomic_output
from wmtp_storage_sync.errors import SyncError

MANIFEST_NAME = ".wmtp-manifest.json"
MANIFEST_FORMAT = "wmtp-sync-manifest"
MANIFEST_VERSION = 1
# Download temp files end with this suffix; scans skip them so a killed pull never syncs a fragment.
PARTIAL_SUFFIX = ".wmtp-partial"
HASH_CHUNK = 4 * 1024 * 1024
# Work in progress a scan leaves out, as the writers in wmtp name it: complete only once renamed into
# place, so never worth sending (a colleague would get half a checkpoint).
LOCK_FILES = frozenset({".wmtp.lock"})  # wmtp/train/run_lock.py: a run dir's writer lock
# tempfile.mkdtemp(prefix=".NAME.") staging dirs (checkpoints, model dirs, `wmtp model micro`) and the
# ".NAME.old" a replaced checkpoint is moved to before it is removed (wmtp/common/files.py: replace_dir).
STAGING_DIR = re.compile(r"\..+\.(?:[a-z0-9_]{8}|old)")
STAGING_FILE = re.compile(r"\..+\.tmp")  # atomic writes: ".NAME.XXXXXXXX.tmp" (wmtp/common/files.py), ".NAME.tmp"
CHECKPOINTS_DIR = "checkpoints"  # in it, a hidden entry is a checkpoint being written or removed


@dataclass(frozen=True)
class FileEntry:
    """One file as a manifest records it. `etag` is the remote object's ETag when it was verified
    (remote manifests only): a later listing with another ETag means the object was replaced since."""

    size: int
    sha256: str
    etag: Optional[str] = None

    def to_json(self) -> dict:
        data = {"size": self.size, "sha256": self.sha256}
        if self.etag is not None:
            data["etag"] = self.etag
        return data


@dataclass
class Manifest:
    files: dict[str, FileEntry]

    def to_bytes(self) -> bytes:
        body = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "files": {path: self.files[path].to_json() for path in sorted(self.files)},
        }
        return json.dumps(body, indent=1, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> "Manifest":
        """Parse a manifest; `where` names it in the error (e.g. `s3://bucket/prefix/.wmtp-manifest.json`)."""
        try:
            body = json.loads(data)
            if body.get("format") != MANIFEST_FORMAT or body.get("version") != MANIFEST_VERSION:
                raise ValueError(f"expected format {MANIFEST_FORMAT!r} version {MANIFEST_VERSION}")
            files = {
                path: FileEntry(int(e["size"]), str(e["sha256"]), e.get("etag")) for path, e in body["files"].items()
            }
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SyncError(f"{where}: not a valid sync manifest ({exc})") from None
        return cls(files)


@dataclass(frozen=True)
class LocalFile:
    """A file found by the scan: its path relative to the root, size and modification time."""

    rel: str
    path: Path
    size: int
    mtime_ns: int


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in large chunks (hashlib releases the GIL, so threads hash in parallel)."""
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def is_selected(rel: str, selection: Iterable[str]) -> bool:
    """True when `rel` is one of the selected paths or lies under one; the empty path selects all."""
    for prefix in selection:
        if prefix == "" or rel == prefix or rel.startswith(prefix + "/"):
            return True
    return False


def _unfinished(name: str, parent: str, is_dir: bool) -> bool:
    """`name` (in a dir named `parent`, "" at the root) is work in progress itself."""
    if name in LOCK_FILES or (parent == CHECKPOINTS_DIR and name.startswith(".")):
        return True
    return bool((STAGING_DIR if is_dir else STAGING_FILE).fullmatch(name))


def is_work_in_progress(rel: str, is_dir: bool) -> bool:
    """True for what a writer has not finished (`rel`: a POSIX path under the root): a lock file, a
    staging dir or temp file, anything hidden in a `checkpoints/` dir, or something inside one of those."""
    parts = rel.split("/")
    return any(
        _unfinished(name, parts[i - 1] if i else "", is_dir or i < len(parts) - 1) for i, name in enumerate(parts)
    )


def scan_local(
    root: Path, selection: list[str], skipped: Optional[list[tuple[str, str]]] = None
) -> dict[str, LocalFile]:
    """Every regular file under `root` within `selection`, skipping the manifest, download fragments and
    work in progress (`is_work_in_progress`).

    Symlinks: a file symlink whose target lies inside the root is read as a file (its content is sent
    under the link's path); one that leads out of the root, a symlinked directory (never followed, which
    keeps the walk finite) and a broken link are left out and listed in `skipped` as (path, why) — a
    push sends only what is under the root."""
    found: dict[str, LocalFile] = {}
    real_root = root.resolve()
    skipped = skipped if skipped is not None else []
    for prefix in selection:
        start = root / prefix if prefix else root
        if prefix and is_work_in_progress(prefix, start.is_dir()):
            continue
        if prefix and not _inside(start.resolve(), real_root):
            skipped.append((prefix, "a symlink out of the sync root"))
        elif start.is_file():
            _add_file(found, root, start)
        elif start.is_dir():
            for path in _walk_files(start, prefix.rpartition("/")[2], root, real_root, skipped):
                _add_file(found, root, path)
    return found


def _inside(path: Path, real_root: Path) -> bool:
    return path == real_root or real_root in path.parents


def _walk_files(
    directory: Path, name: str, root: Path, real_root: Path, skipped: list[tuple[str, str]]
) -> Iterator[Path]:
    """Files under `directory` (`name`: its own name, "" for the root); see `scan_local`."""
    stack = [(directory, name)]
    while stack:
        folder, parent = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    if not _unfinished(entry.name, parent, True):
                        stack.append((Path(entry.path), entry.name))
                elif _unfinished(entry.name, parent, False):
                    continue
                elif entry.is_symlink():
                    why = None
                    if entry.is_dir():
                        why = "a symlinked directory (not followed)"
                    elif not entry.is_file():
                        why = "a broken symlink"
                    elif not _inside(Path(entry.path).resolve(), real_root):
                        why = "a symlink out of the sync root"
                    if why is None:
                        yield Path(entry.path)
                    else:
                        skipped.append((Path(entry.path).relative_to(root).as_posix(), why))
                elif entry.is_file():
                    yield Path(entry.path)


def _add_file(found: dict[str, LocalFile], root: Path, path: Path) -> None:
    if path.name == MANIFEST_NAME or path.name.endswith(PARTIAL_SUFFIX):
        return
    stat = path.stat()
    rel = path.relative_to(root).as_posix()
    found[rel] = LocalFile(rel, path, stat.st_size, stat.st_mtime_ns)


class HashCache:
    """SHA-256 of local files keyed by (size, mtime_ns), so an unchanged file is never re-read.

    One JSON file per sync root in the user's cache directory (`$WMTP_CACHE_DIR`, else
    `$XDG_CACHE_HOME/wmtp`, else `~/.cache/wmtp`), never inside the synced tree itself.
    """

    def __init__(self, root: Path, cache_dir: Optional[Path] = None):
        self.root = root.resolve()
        key = hashlib.sha256(str(self.root).encode()).hexdigest()[:24]
        self.path = (cache_dir or default_cache_dir()) / "sync-hashes" / f"{key}.json"
        self.entries: dict[str, list] = {}
        self.dirty = False
        self._load()

    def _load(self) -> None:
        try:
            body = json.loads(self.path.read_text())
            if body.get("root") == str(self.root):
                self.entries = body["entries"]
        except (OSError, ValueError, KeyError, TypeError):
            # A missing or unreadable cache only costs re-hashing; never an error.
            self.entries = {}

    def lookup(self, f: LocalFile) -> Optional[str]:
        cached = self.entries.get(f.rel)
        if cached and cached[0] == f.size and cached[1] == f.mtime_ns:
            return cached[2]
        return None

    def store(self, f: LocalFile, sha256: str) -> None:
        self.entries[f.rel] = [f.size, f.mtime_ns, sha256]
        self.dirty = True

    def forget(self, rel: str) -> None:
        if self.entries.pop(rel, None) is not None:
            self.dirty = True

    def save(self) -> None:
        """Write atomically (temp file + rename) so a killed sync never leaves a torn cache."""
        if not self.dirty:
            return
        with atomic_output(self.path, "w") as f:
            json.dump({"root": str(self.root), "entries": self.entries}, f)
        self.dirty = False


def default_cache_dir() -> Path:
    if os.environ.get("WMTP_CACHE_DIR"):
        return Path(os.environ["WMTP_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "wmtp"
