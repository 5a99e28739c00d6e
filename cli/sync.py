"""`wmtp sync-storage`: push/pull storage/ to S3-compatible stores, VESSL volumes or a local dir."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

DEST_HELP = "s3://BUCKET/PREFIX, vessl://STORAGE/VOLUME (optionally /PATH inside it) or a local directory."


def sync_storage(
    paths: Optional[List[str]] = typer.Argument(
        None, help="Files or directories inside the root to sync (default: the whole root)."
    ),
    dest: Optional[str] = typer.Option(None, "--dest", "-d", help=DEST_HELP, show_default=False),
    root: Path = typer.Option(Path("storage"), "--root", help="Local sync root; object keys are relative to it."),
    direction: str = typer.Option("up", "--direction", help="up: root → dest; down: dest → root."),
    endpoint_url: Optional[str] = typer.Option(
        None, "--endpoint-url", help="S3 endpoint (MinIO, Ceph, a test server); default: AWS or $AWS_ENDPOINT_URL."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would move and how much; move nothing."),
    delete: bool = typer.Option(False, "--delete", help="Remove files at the target that the source lacks."),
    verify: bool = typer.Option(
        False, "--verify", help="Re-read and hash objects that look unchanged, and each upload."
    ),
    jobs: int = typer.Option(10, "--jobs", "-j", help="Parallel transfers."),
    part_size: int = typer.Option(
        16, "--part-size", help="MiB; larger files go multipart in parts of this size (≥ 5)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar with bytes/s."),
) -> None:
    """Sync the storage root with S3, a VESSL volume or a directory through (path, size, SHA-256) manifests.

    Unchanged files move nothing and every upload is verified.

    The remote manifest is written last: an interrupted sync never looks complete, and a re-run resumes it.
    """
    from wmtp_storage_sync import SyncError, SyncOptions, summary_lines, sync

    if dest is None:
        raise SyncError(f"--dest is required: {DEST_HELP}")
    if part_size < 5:
        raise SyncError(f"--part-size {part_size}: S3 parts must be at least 5 MiB")
    options = SyncOptions(
        dest=dest,
        root=root,
        paths=paths or (),
        direction=direction.lower(),
        endpoint_url=endpoint_url,
        dry_run=dry_run,
        delete=delete,
        verify=verify,
        jobs=jobs,
        part_size=part_size * 1024 * 1024,
        progress=progress,
    )
    report = sync(options)
    for rel, why in report.skipped:  # on stderr: the summary stays what scripts read
        typer.echo(f"warning: not synced: {rel} ({why})", err=True)
    for line in summary_lines(report):
        typer.echo(line)


def register(app: typer.Typer) -> None:
    """Add the top-level `sync-storage` command to `app`."""
    app.command("sync-storage")(sync_storage)
