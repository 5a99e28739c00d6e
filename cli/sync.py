"""`wmtp sync-storage`: push/pull storage/ to S3-compatible stores, VESSL volumes or a local dir."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the top-level `sync-storage` command to `app`."""
