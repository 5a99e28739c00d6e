"""Where a sync stores objects: S3-compatible stores (VESSL volumes resolve to one) or a local directory."""

from wmtp_storage_sync.backends.base import Backend, ObjectInfo, RemoteObject

__all__ = ["Backend", "ObjectInfo", "RemoteObject"]
