"""Job names: one rule for every target (a DNS-1035 label), and a readable default."""

from __future__ import annotations

import datetime as _dt
import re

from wmtp.errors import WmtpError

# Kubernetes' DNS-1035 label (what the training-operator's webhook checks for a PyTorchJob name);
# it is also a valid compose project name and VESSL run name, so one rule serves every target.
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_LABEL_LENGTH = 63


def validate_job_name(name: str, origin: str = "--name") -> str:
    """Return `name` when it is a DNS-1035 label, else raise one line naming `origin`."""
    if not DNS1035_LABEL.match(name or "") or len(name) > MAX_LABEL_LENGTH:
        raise WmtpError(
            f"{origin} {name!r}: must be a DNS-1035 label: lowercase letters, digits and '-', "
            f"starting with a letter, ending with a letter or digit, at most {MAX_LABEL_LENGTH} characters"
        )
    return name


def default_job_name(experiment: str, now: _dt.datetime | None = None) -> str:
    """`wmtp-<experiment>-<YYYYmmdd-HHMMSS>`, with the experiment folded into label characters."""
    stamp = (now or _dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    folded = re.sub(r"[^a-z0-9]+", "-", experiment.lower()).strip("-") or "job"
    budget = MAX_LABEL_LENGTH - len("wmtp--") - len(stamp)
    return f"wmtp-{folded[:budget].rstrip('-')}-{stamp}"
