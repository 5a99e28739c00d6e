"""Evaluation errors: one clear line naming the file:line, option or key at fault."""

from wmtp.errors import WmtpError


class EvalError(WmtpError):
    """Bad evaluation input: a samples or benchmark file line, an option (k > n, …), a sandbox limit."""
