"""User-facing errors: each carries one clear line naming the key, file or file:line at fault.

The CLI prints `str(error)` without a traceback and exits with status 2.
"""


class WmtpError(Exception):
    """Base class for errors caused by bad input (spec, override, path, checkpoint, data line)."""


class CheckpointError(WmtpError):
    """A model directory or checkpoint file is missing, corrupt, or disagrees with its params."""


class EvalError(WmtpError):
    """Bad evaluation input: a samples or benchmark file line, an option (k > n, …), a sandbox limit."""
