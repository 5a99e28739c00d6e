"""Small file helpers: atomic writes (temp file then rename), directories published by a rename, and cheap
fingerprints of large files.

Temp names are `.<name>.<8 random chars>.tmp` for files and `.<name>.<8 random chars>` for directories
(`.<name>.old` for a directory moved aside by `replace_dir`): `wmtp_storage_sync` leaves exactly these
out of a push, and checkpoint recovery (`wmtp.train.checkpointing`) looks for the directory forms.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

FINGERPRINT_BLOCK = 1 << 20  # bytes hashed from each end of a file for the cheap staleness check
TEMP_NAME_TRIES = 100


def _create_temp_beside(path: Path) -> tuple[int, str]:
    """A new, exclusively created temp file beside `path`: (fd, name).

    Created with mode 0666 less the umask, the permissions `open(path, "w")` gives a new file:
    `tempfile.mkstemp`'s 0600 would make datasets, results and shared manifests unreadable to others."""
    for _ in range(TEMP_NAME_TRIES):
        name = str(path.parent / f".{path.name}.{os.urandom(4).hex()}.tmp")
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), name
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: no free temp name for {path.name} after {TEMP_NAME_TRIES} tries")


@contextlib.contextmanager
def atomic_output(path: str | Path, mode: str = "wb") -> Iterator:
    """Open a temp file beside `path`; rename it over `path` only when the block ends without error.

    A crash or an exception leaves the old file (or no file) — never a half-written one. The data is
    fsynced before the rename; the parent directory is created if missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = _create_temp_beside(path)
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


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` through `atomic_output`."""
    with atomic_output(path, "wb") as handle:
        handle.write(text.encode("utf-8"))


def write_json_atomic(path: str | Path, payload: dict) -> None:
    """Write `payload` as indented JSON (and a final newline) to `path` through `atomic_output`."""
    with atomic_output(path, "w") as handle:
        json.dump(payload, handle, indent=2, sort_keys=False)
        handle.write("\n")


@contextlib.contextmanager
def atomic_dir(dest: str | Path, replace: bool = False) -> Iterator[Path]:
    """A new temp directory beside `dest` to fill; renamed to `dest` when the block ends without error,
    removed (with what was written) otherwise.

    `replace=True` swaps out an existing `dest` (`replace_dir`); otherwise the caller has made sure
    `dest` does not exist. The directory is mkdtemp's (mode 0700).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        yield tmp
        if replace:
            replace_dir(tmp, dest)
        else:
            os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(new: Path, dest: Path) -> None:
    """Put `new` at `dest`; an existing `dest` is moved aside to `.<name>.old` first and removed after the swap.

    If the second rename fails, the old `dest` is moved back: a failed save never loses a checkpoint. A
    kill between the two renames leaves `.<name>.old` as the only copy (checkpoint recovery restores it)."""
    if dest.exists():
        trash = dest.with_name(f".{dest.name}.old")
        shutil.rmtree(trash, ignore_errors=True)
        os.rename(dest, trash)
        try:
            os.rename(new, dest)
        except BaseException:
            os.rename(trash, dest)
            raise
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(new, dest)


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
