"""One line for a request that never got an answer (VESSL SDK, Kubernetes client: both use urllib3)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit


def unreachable_cause(exc: BaseException) -> str:
    """Why a request never got an answer, in a few words: the OS error under urllib3's wrappers
    (`connection refused`, `name or service not known`, a certificate failure), else urllib3's own
    message without its object repr; the exception's type follows in parentheses, for searching."""
    reason = getattr(exc, "reason", None) or exc  # MaxRetryError wraps the last attempt's error
    error, seen = reason, set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.strerror:
            text = error.strerror
            break
        error = error.__cause__ or error.__context__
    else:
        # e.g. "<urllib3.connection.HTTPSConnection object at 0x7f…>: Connection to h timed out. (…)"
        text = re.sub(r"^<[^>]*>:\s*", "", " ".join(str(reason).split())) or type(reason).__name__
    text = text[:1].lower() + text[1:]
    return f"{text[:200]} ({type(exc).__name__})"


def display_url(url: str) -> str:
    """`url` as it may be printed: scheme, host, port and path; userinfo, query and fragment dropped."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", "")) or "?"
