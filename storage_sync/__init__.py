"""`wmtp sync-storage`: manifest-driven, resumable, verified sync of storage/ with S3, VESSL volumes or a directory."""

from wmtp_storage_sync.destination import parse_destination
from wmtp_storage_sync.engine import SyncOptions, SyncReport, Transfer, summary_lines, sync
from wmtp_storage_sync.errors import SyncError
from wmtp_storage_sync.manifest import MANIFEST_NAME, FileEntry, HashCache, Manifest

__all__ = [
    "MANIFEST_NAME",
    "FileEntry",
    "HashCache",
    "Manifest",
    "SyncError",
    "SyncOptions",
    "SyncReport",
    "Transfer",
    "parse_destination",
    "summary_lines",
    "sync",
]
