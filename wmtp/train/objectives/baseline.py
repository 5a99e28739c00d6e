"""baseline: uniform MTP cross-entropy (every token weight 1); the policy trains. No settings of its own."""

from __future__ import annotations

from wmtp.train.objectives.base import Objective


class BaselineObjective(Objective):
    name = "baseline"


OBJECTIVE = BaselineObjective
