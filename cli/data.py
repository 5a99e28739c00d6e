"""`wmtp data …` command group."""

from __future__ import annotations

from cli.common import WmtpTyper

app = WmtpTyper(help="Datasets: prepare CodeContests / MBPP / HumanEval, index, validate.")
