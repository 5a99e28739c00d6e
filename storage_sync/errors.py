"""Errors of `wmtp sync-storage`: one line naming the path, key or destination at fault."""

from __future__ import annotations

from wmtp.errors import WmtpError


class SyncError(WmtpError):
    """A bad destination or path, an unreachable or refusing store, or a transfer that failed verification.

    The message never contains a credential: only URLs without user info, bucket names, keys and paths.
    """
