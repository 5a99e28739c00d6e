"""The sync engine: compare a local tree with a destination through manifests and move only what differs.

Up (local → destination):
  1. scan the selected local files; the hash cache supplies SHA-256 for files whose size and mtime
     are unchanged, so a no-op re-sync reads no file content. Work in progress (checkpoints being
     written, lock and temp files) is left out, and so is any symlink that leads out of the root
     (`manifest.scan_local`; reported in `SyncReport.skipped`);
  2. meanwhile (on two threads) read the remote manifest (the last complete sync) and list the remote
     objects;
  3. a file is unchanged when the manifest records its size and hash and the listing still shows the
     object with the ETag recorded then — no request per file. Anything else is checked in parallel:
     an object that an interrupted run already uploaded is recognised by the SHA-256 it carries (HEAD),
     everything else is uploaded and verified. A file that must be sent whatever its content (nothing
     of its size is stored under its key) is not hashed beforehand: the upload hashes it as it reads it;
  4. the manifest is written once every file made it (never before: it is what says a sync is complete);
  5. with `--delete`, remote objects no local file accounts for are removed after the manifest, which
     no longer names them, so an interrupted delete leaves unlisted leftovers, not a false manifest.
Down (destination → local) reads the remote manifest, fetches what the local tree lacks into temp
files, checks each against the manifest's SHA-256 and renames it into place; it never writes through a
symlinked directory inside the root (refused, one line, before anything is fetched).
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from wmtp_storage_sync.backends.base import Backend, RemoteObject
from wmtp_storage_sync.destination import LocalLocation, Location, S3Location, VesslLocation, parse_destination
from wmtp_storage_sync.errors import SyncError
from wmtp_storage_sync.manifest import (
    MANIFEST_NAME,
    PARTIAL_SUFFIX,
    FileEntry,
    HashCache,
    LocalFile,
    Manifest,
    default_cache_dir,
    is_selected,
    scan_local,
    sha256_file,
)

MiB = 1024 * 1024
# Reasons that mean the destination had drifted from the last manifest: reported as repairs.
REPAIR_REASONS = ("missing on remote", "replaced on remote", "corrupt on remote", "missing locally", "corrupt locally")


@dataclass
class SyncOptions:
    """Everything `wmtp sync-storage` takes; `paths` are files or directories inside `root`."""

    dest: str
    root: Path = Path("storage")
    paths: Sequence[str] = ()
    direction: str = "up"  # "up": root → dest; "down": dest → root
    endpoint_url: Optional[str] = None
    dry_run: bool = False
    delete: bool = False
    verify: bool = False  # re-read and hash objects that look unchanged, and each upload after it is sent
    jobs: int = 10
    part_size: int = 16 * MiB  # larger files go multipart in parts of this size
    progress: bool = True
    cache_dir: Optional[Path] = None


@dataclass(frozen=True)
class Transfer:
    rel: str
    size: int
    reason: str


@dataclass
class SyncReport:
    destination: str
    direction: str
    dry_run: bool
    transferred: list[Transfer] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: int = 0
    manifest_written: bool = False
    seconds: float = 0.0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why): symlinks a push left out

    @property
    def bytes_transferred(self) -> int:
        return sum(t.size for t in self.transferred)

    @property
    def repaired(self) -> list[Transfer]:
        return [t for t in self.transferred if t.reason in REPAIR_REASONS]


def sync(opts: SyncOptions) -> SyncReport:
    """Run one sync; raises `SyncError` (one line) on bad input or a failed transfer."""
    started = time.monotonic()
    if opts.direction not in ("up", "down"):
        raise SyncError(f"--direction {opts.direction!r}: expected 'up' or 'down'")
    if opts.jobs < 1:
        raise SyncError(f"--jobs {opts.jobs}: expected at least 1")
    location = parse_destination(opts.dest)
    root = Path(opts.root)
    _check_root(root, opts.direction)
    _check_no_overlap(root, location)
    selection = resolve_selection(root, opts.paths, opts.direction)
    backend = open_backend(location, opts, write=opts.direction == "up" and not opts.dry_run)
    try:
        run = _Upload if opts.direction == "up" else _Download
        report = run(opts, root, selection, backend).run()
    finally:
        backend.close()
    report.seconds = time.monotonic() - started
    return report


def open_backend(location: Location, opts: SyncOptions, write: bool) -> Backend:
    journal_dir = opts.cache_dir or default_cache_dir()
    if isinstance(location, LocalLocation):
        from wmtp_storage_sync.backends.local import LocalDirBackend

        return LocalDirBackend(location.path)
    if isinstance(location, S3Location):
        from wmtp_storage_sync.backends.s3 import S3Backend

        return S3Backend(
            location.bucket,
            location.prefix,
            endpoint_url=opts.endpoint_url,
            jobs=opts.jobs,
            part_size=opts.part_size,
            journal_dir=journal_dir,
        )
    if isinstance(location, VesslLocation):
        from wmtp_storage_sync.backends.vessl import open_vessl_volume

        return open_vessl_volume(
            location,
            write=write,
            endpoint_url=opts.endpoint_url,
            jobs=opts.jobs,
            part_size=opts.part_size,
            journal_dir=journal_dir,
        )
    raise SyncError(f"--dest {opts.dest!r}: unsupported destination")


def _check_root(root: Path, direction: str) -> None:
    if direction == "up" and not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise SyncError(f"{root}: the sync root {what} (pass --root DIR)")
    if direction == "down" and root.exists() and not root.is_dir():
        raise SyncError(f"{root}: the sync root is not a directory")


def _check_no_overlap(root: Path, location: Location) -> None:
    """A local destination inside the root (or around it) would sync into itself."""
    if not isinstance(location, LocalLocation):
        return
    a, b = root.resolve(), location.path.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise SyncError(f"--dest {location.path}: overlaps the sync root {root}")


def resolve_selection(root: Path, paths: Sequence[str], direction: str) -> list[str]:
    """Relative POSIX paths inside `root` for the PATHS arguments ("" = the whole root).

    A path is taken relative to the current directory when it lands inside the root
    (`storage/models_v2/m`), else relative to the root itself (`models_v2/m`).
    """
    if not paths:
        return [""]
    root_abs = root.resolve()
    selection = []
    for given in paths:
        as_given = (Path.cwd() / given).resolve()
        if as_given == root_abs or root_abs in as_given.parents:
            rel = as_given.relative_to(root_abs).as_posix()
        elif Path(given).is_absolute():
            raise SyncError(f"{given}: outside the sync root {root} (pass --root)")
        else:
            rel = _clean_relative(given)
        rel = "" if rel == "." else rel
        if direction == "up" and not (root / rel).exists():
            raise SyncError(f"{given}: no such file or directory under {root}")
        selection.append(rel)
    return selection


def _clean_relative(path: str) -> str:
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise SyncError(f"{path}: '..' is not allowed in a sync path")
    return "/".join(parts)


class _Progress:
    """A rich progress bar with bytes and bytes/s on stderr; a no-op when disabled."""

    def __init__(self, enabled: bool, description: str, total: int, console=None):
        self._lock = threading.Lock()
        self._total = total
        self._bar = None
        if enabled and total > 0:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            console = console or Console(stderr=True)
            if not console.is_terminal:
                return  # logs and pipes get the summary line only, not a frozen bar
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=console,
            )
            self._task = self._bar.add_task(description, total=total)

    def __enter__(self) -> "_Progress":
        if self._bar:
            self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar:
            self._bar.stop()

    def advance(self, n: int) -> None:
        if self._bar:
            self._bar.advance(self._task, n)

    def skip(self, n: int) -> None:
        """A file counted in the total turned out not to need a transfer."""
        if self._bar:
            with self._lock:
                self._total -= n
                # Progress.update(total=…) resets the task's speed samples, so the rate read "?" after every
                # skipped file (and at the end when the last file was a skip); set the total in place instead.
                task = next(t for t in self._bar.tasks if t.id == self._task)
                task.total = self._total
                self._bar.update(self._task)  # marks the task finished when nothing is left


@dataclass
class _Outcome:
    rel: str
    entry: Optional[FileEntry]  # what the manifest should record (None: nothing to record)
    transfer: Optional[Transfer] = None  # done (or planned, in a dry run)
    local: Optional[LocalFile] = None  # for the hash cache
    sha256: Optional[str] = None


class _Run:
    def __init__(self, opts: SyncOptions, root: Path, selection: list[str], backend: Backend):
        self.opts, self.root, self.selection, self.backend = opts, root, selection, backend
        self.cache = HashCache(root, opts.cache_dir)
        self.report = SyncReport(backend.url, opts.direction, opts.dry_run)

    def _local_sha(self, f: LocalFile) -> str:
        return self.cache.lookup(f) or sha256_file(f.path)

    def _run_parallel(
        self, tasks: list[Callable[[], _Outcome]], description: str, total: int, on_outcome: Callable[[_Outcome], None]
    ) -> list[SyncError]:
        """Run tasks on `jobs` threads; collect per-file errors so one bad file does not stop the rest."""
        failures: list[SyncError] = []
        progress = _Progress(self.opts.progress and not self.opts.dry_run, description, total)
        self._progress = progress
        with progress, ThreadPoolExecutor(max_workers=self.opts.jobs, thread_name_prefix="sync") as pool:
            futures: list[Future] = [pool.submit(task) for task in tasks]
            try:
                for future in _as_done(futures):
                    try:
                        on_outcome(future.result())
                    except SyncError as exc:
                        failures.append(exc)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        return failures

    def _save_cache(self) -> None:
        self.cache.save()


def _as_done(futures: list[Future]):
    """Yield futures as they finish (like `as_completed`, but a KeyboardInterrupt stays responsive)."""
    pending = set(futures)
    while pending:
        done, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
        yield from done


class _Upload(_Run):
    def run(self) -> SyncReport:
        # The manifest and the listing are round trips to the store; the scan is local work (and the
        # whole of it for a no-op re-sync of many small files), so they overlap.
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="sync-remote") as remote:
            manifest_read = remote.submit(self.backend.read_manifest)
            listed = remote.submit(self.backend.list_objects, self.selection)
            local = scan_local(self.root, self.selection, self.report.skipped)
            remote_manifest = manifest_read.result()
            listing = listed.result()
        old = remote_manifest.files if remote_manifest else {}
        entries: dict[str, FileEntry] = {}
        pending: list[LocalFile] = []
        for f in local.values():
            sha = self.cache.lookup(f)
            if sha and not self.opts.verify and _recorded(old.get(f.rel), listing.get(f.rel), f.size, sha):
                entries[f.rel] = old[f.rel]
                self.report.unchanged += 1
            else:
                pending.append(f)
        tasks = [lambda f=f: self._reconcile(f, old.get(f.rel), listing.get(f.rel)) for f in pending]
        try:
            failures = self._run_parallel(
                tasks, "upload", sum(f.size for f in pending), lambda outcome: self._record(outcome, entries)
            )
        finally:
            self._save_cache()
        if failures:
            raise SyncError(
                f"{len(failures)} of {len(pending)} file(s) failed, so the manifest of {self.backend.url} "
                f"was not updated (re-run to resume); first: {failures[0]}"
            )
        self._finish_manifest(old, remote_manifest is not None, entries, listing, local)
        stale = sorted(rel for rel in listing if rel not in local)
        if self.opts.delete and stale:
            # After the manifest: it no longer names these objects, so a crash halfway through the
            # deletes leaves only unlisted leftovers (removed by the re-run), never a manifest that
            # vouches for an object that is gone.
            if not self.opts.dry_run:
                self.backend.delete(stale)
            self.report.deleted = stale
        return self.report

    def _record(self, outcome: _Outcome, entries: dict[str, FileEntry]) -> None:
        if outcome.local is not None and outcome.sha256 is not None:
            self.cache.store(outcome.local, outcome.sha256)
        if outcome.entry is not None:
            entries[outcome.rel] = outcome.entry
        if outcome.transfer is not None:
            self.report.transferred.append(outcome.transfer)
        else:
            self.report.unchanged += 1

    def _reconcile(self, f: LocalFile, old: Optional[FileEntry], listed: Optional[RemoteObject]) -> _Outcome:
        """Decide for one file — unchanged, already uploaded by an interrupted run, or send — and act."""
        sha = self.cache.lookup(f)
        if sha is None and (listed is None or listed.size != f.size) and not self.opts.dry_run:
            # Nothing of this size is stored under the key, so the file goes whatever its hash:
            # the upload computes the hash in the same read that sends the bytes.
            return self._send(f, None, old, listed)
        sha = sha or sha256_file(f.path)
        reason = None
        if _recorded(old, listed, f.size, sha):
            reason = self._verify_remote(f.rel, sha)
            if reason is None:
                self._progress.skip(f.size)
                return _Outcome(f.rel, old, local=f, sha256=sha)
        elif listed is not None and listed.size == f.size:
            info = self.backend.head(f.rel)
            if info is not None and info.sha256 == sha:
                reason = self._verify_remote(f.rel, sha)
                if reason is None:
                    self._progress.skip(f.size)
                    return _Outcome(f.rel, FileEntry(f.size, sha, info.etag), local=f, sha256=sha)
        reason = reason or _upload_reason(old, listed, sha)
        if self.opts.dry_run:
            return _Outcome(f.rel, None, Transfer(f.rel, f.size, reason), local=f, sha256=sha)
        return self._send(f, sha, old, listed, reason)

    def _send(
        self,
        f: LocalFile,
        sha: Optional[str],
        old: Optional[FileEntry],
        listed: Optional[RemoteObject],
        reason: Optional[str] = None,
    ) -> _Outcome:
        """Upload (the backend verifies it); `sha` None: the backend hashes the file as it sends it."""
        info = self.backend.upload(f, sha, self._progress.advance)
        sha = info.sha256
        if sha is None:
            raise SyncError(f"{self.backend.url}/{f.rel}: the upload reported no SHA-256")
        if self.opts.verify and self.backend.read_sha256(f.rel) != sha:
            raise SyncError(f"{self.backend.url}/{f.rel}: re-read after upload does not match the file's SHA-256")
        transfer = Transfer(f.rel, f.size, reason or _upload_reason(old, listed, sha))
        return _Outcome(f.rel, FileEntry(f.size, sha, info.etag), transfer, local=f, sha256=sha)

    def _verify_remote(self, rel: str, sha: str) -> Optional[str]:
        """With --verify, re-read an object that looks right; a hash mismatch makes it a repair."""
        if self.opts.verify and self.backend.read_sha256(rel) != sha:
            return "corrupt on remote"
        return None

    def _finish_manifest(
        self,
        old: dict[str, FileEntry],
        existed: bool,
        entries: dict[str, FileEntry],
        listing: dict[str, RemoteObject],
        local: dict[str, LocalFile],
    ) -> None:
        """Carry over entries outside this run's reach, then write the manifest — the last write of a sync."""
        final = dict(entries)
        for rel, entry in old.items():
            if rel in final:
                continue
            if not is_selected(rel, self.selection):
                final[rel] = entry  # not listed this run: the last complete sync still vouches for it
            elif not self.opts.delete and _recorded(entry, listing.get(rel), entry.size, entry.sha256):
                final[rel] = entry  # a remote-only file we were not asked to delete
        if existed and final == old:
            return
        if not self.opts.dry_run:
            self.backend.write_manifest(Manifest(final))
        self.report.manifest_written = True


def _recorded(entry: Optional[FileEntry], listed: Optional[RemoteObject], size: int, sha: str) -> bool:
    """The manifest says this exact content is stored, and the listing shows that very object."""
    return (
        entry is not None
        and listed is not None
        and entry.size == size
        and entry.sha256 == sha
        and listed.size == size
        and entry.etag is not None
        and listed.etag == entry.etag
    )


def _upload_reason(old: Optional[FileEntry], listed: Optional[RemoteObject], sha: str) -> str:
    if old is None:
        return "new" if listed is None else "differs on remote"
    if old.sha256 != sha:
        return "changed"
    return "missing on remote" if listed is None else "replaced on remote"


class _Download(_Run):
    def run(self) -> SyncReport:
        manifest = self.backend.read_manifest()
        if manifest is None:
            raise SyncError(f"{self.backend.url}: no {MANIFEST_NAME} there, so no complete sync to pull from")
        for rel in manifest.files:
            _check_safe_key(rel, self.backend.url)
        wanted = {rel: e for rel, e in manifest.files.items() if is_selected(rel, self.selection)}
        for prefix in self.selection:
            if not any(is_selected(rel, [prefix]) for rel in wanted):
                raise SyncError(f"{prefix or '.'}: not in the manifest of {self.backend.url}")
        local = scan_local(self.root, self.selection) if self.root.exists() else {}
        pending = []
        for rel, entry in sorted(wanted.items()):
            f = local.get(rel)
            if f is not None and not self.opts.verify and f.size == entry.size and self.cache.lookup(f) == entry.sha256:
                self.report.unchanged += 1
            else:
                _refuse_symlinked_dirs(self.root, rel)  # all of them before the first byte is written
                pending.append((rel, entry, f))
        tasks = [lambda p=p: self._fetch(*p) for p in pending]
        try:
            failures = self._run_parallel(tasks, "download", sum(e.size for _, e, _ in pending), self._record)
            if failures:
                raise SyncError(f"{len(failures)} of {len(pending)} file(s) failed to download; first: {failures[0]}")
            stale = sorted(rel for rel in local if rel not in wanted)
            if self.opts.delete and stale:
                if not self.opts.dry_run:
                    for rel in stale:
                        (self.root / rel).unlink(missing_ok=True)
                        self.cache.forget(rel)
                self.report.deleted = stale
        finally:
            self._save_cache()
        return self.report

    def _record(self, outcome: _Outcome) -> None:
        if outcome.local is not None and outcome.sha256 is not None:
            self.cache.store(outcome.local, outcome.sha256)
        if outcome.transfer is not None:
            self.report.transferred.append(outcome.transfer)
        else:
            self.report.unchanged += 1

    def _fetch(self, rel: str, entry: FileEntry, f: Optional[LocalFile]) -> _Outcome:
        if f is not None and f.size == entry.size:
            sha = sha256_file(f.path) if self.opts.verify else self._local_sha(f)
            if sha == entry.sha256:
                self._progress.skip(entry.size)
                return _Outcome(rel, entry, local=f, sha256=sha)
            reason = "corrupt locally" if self.opts.verify and self.cache.lookup(f) == entry.sha256 else "changed"
        else:
            reason = "new" if f is None else "changed"
        transfer = Transfer(rel, entry.size, reason)
        if self.opts.dry_run:
            return _Outcome(rel, entry, transfer)
        dest = self.root / rel
        _refuse_symlinked_dirs(self.root, rel)  # again: the tree may have changed since the run began
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Not `atomic_output`: the backend writes the file itself (by path, in parallel ranges for S3), and
        # the content is checked before it is renamed into place; PARTIAL_SUFFIX marks the fragment.
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{threading.get_ident()}{PARTIAL_SUFFIX}")
        try:
            self.backend.download(rel, entry, tmp, self._progress.advance)
            got = sha256_file(tmp)
            if got != entry.sha256:
                raise SyncError(
                    f"{self.backend.url}/{rel}: downloaded content has SHA-256 {got[:16]}…, the manifest says "
                    f"{entry.sha256[:16]}… — the remote object is corrupt"
                )
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        stat = dest.stat()
        return _Outcome(
            rel, entry, transfer, local=LocalFile(rel, dest, stat.st_size, stat.st_mtime_ns), sha256=entry.sha256
        )


def _check_safe_key(rel: str, url: str) -> None:
    """A manifest from elsewhere must not steer a download outside the root."""
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise SyncError(f"{url}/{MANIFEST_NAME}: unsafe path {rel!r} in the manifest")


def _refuse_symlinked_dirs(root: Path, rel: str) -> None:
    """A pull writes below the root only: no directory between the root and `rel` may be a symlink,
    which could lead anywhere (the root itself may be one). A symlink at `rel` itself is harmless: the
    download is renamed over the link, never written through it."""
    path = root
    for part in rel.split("/")[:-1]:
        path = path / part
        if path.is_symlink():
            raise SyncError(
                f"{path}: a symlinked directory inside the sync root; a pull never writes through "
                "one (remove the link, or pull into another --root)"
            )


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def summary_lines(report: SyncReport) -> list[str]:
    """What the CLI prints: one line per planned move in a dry run, repairs, then a one-line summary."""
    verb = "upload" if report.direction == "up" else "download"
    lines = []
    if report.dry_run:
        lines += [
            f"would {verb}  {t.rel}  ({human_bytes(t.size)}, {t.reason})"
            for t in sorted(report.transferred, key=lambda t: t.rel)
        ]
        lines += [f"would delete  {rel}" for rel in report.deleted]
    else:
        lines += [f"repaired  {t.rel}  ({t.reason})" for t in report.repaired]
    count, size = len(report.transferred), human_bytes(report.bytes_transferred)
    arrow = "→" if report.direction == "up" else "←"
    if report.dry_run:
        lines.append(
            f"dry run {arrow} {report.destination}: would {verb} {count} file(s) ({size}), "
            f"delete {len(report.deleted)}, "
            f"{report.unchanged} unchanged; nothing was transferred"
        )
        return lines
    rate = f", {human_bytes(report.bytes_transferred / report.seconds)}/s" if report.seconds > 0 and count else ""
    manifest = "manifest written" if report.manifest_written else "manifest unchanged"
    if report.direction == "down":
        manifest = "verified against the manifest"
    lines.append(
        f"{verb}ed {count} file(s) ({size}) in {report.seconds:.1f}s{rate} {arrow} {report.destination}; "
        f"{report.unchanged} unchanged, {len(report.deleted)} deleted; {manifest}"
    )
    return lines
