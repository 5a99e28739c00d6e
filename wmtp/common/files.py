"""Small file helpers: atomic writes (temp file then rename) and cheap fingerprints of large files."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

FINGERPRINT_BLOCK = 1 << 20  # bytes hashed from each end of a file for the cheap staleness check


@contextlib.contextmanager
def atomic_output(path: str | Path, mode: str = "wb") -> Iterator:
    """Open a temp file beside `path`; rename it over `path` only when the block ends without error.

    A crash or an exception leaves the old file (or no file) — never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def write_json_atomic(path: str | Path, payload: dict) -> None:
    with atomic_output(path, "w") as handle:
        json.dump(payload, handle, indent=2, sort_keys=False)
        handle.write("\n")


def file_fingerprint(path: str | Path) -> str:
    """SHA-256 of the size and the first and last MiB: detects a changed file without reading 15 GB."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(FINGERPRINT_BLOCK))
        if size > FINGERPRINT_BLOCK:
            handle.seek(max(FINGERPRINT_BLOCK, size - FINGERPRINT_BLOCK))
            digest.update(handle.read(FINGERPRINT_BLOCK))
    return digest.hexdigest()


def file_sha256(path: str | Path, block_size: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(block_size):
            digest.update(block)
    return digest.hexdigest()
