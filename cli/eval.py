"""`wmtp eval …` command group."""

from __future__ import annotations

from cli.common import WmtpTyper

app = WmtpTyper(help="Evaluation: generate, execute in a sandbox, score pass@k.")
