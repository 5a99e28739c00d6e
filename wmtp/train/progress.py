"""What a training stage prints while it runs, on rank 0.

On a terminal: a rich bar (step/total, ETA, epoch and loss). Anywhere else — a container's log,
`wmtp logs`, CI, a file — one plain, flushed line per logged step and one per validation, so the log
shows progress as it happens (a rich bar writes nothing to a pipe until it stops):

    smoke/critic step 6/12 epoch 0.50 loss 0.3455 tokens/s 1234 elapsed 0:00:12 eta 0:00:12
    smoke/critic step 6/12 validation val/loss 0.3602 (new best)
"""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


def clock(seconds: float) -> str:
    """`h:mm:ss`."""
    seconds = max(int(seconds), 0)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def step_summary(metrics: dict) -> str:
    """`epoch 1.50 loss 6.6000`: what the bar and the plain line show of a step's metrics."""
    shown = {"epoch": ("epoch", ".2f"), "loss/total": ("loss", ".4f")}
    return " ".join(f"{label} {metrics[key]:{fmt}}" for key, (label, fmt) in shown.items() if key in metrics)


class StageProgress:
    """Progress of one stage: a bar on a terminal, plain lines elsewhere, nothing when not `enabled`.

    `update` is called after every optimizer step; it prints a plain line only for logged steps
    (those whose metrics carry `tokens_per_s`, i.e. every `log_interval`). `validation` reports each
    validation's monitored loss and whether it is the new best.
    """

    def __init__(self, enabled: bool, label: str, total: int, start: int, stream: Optional[TextIO] = None):
        self.enabled, self.label, self.total, self.start = enabled, label, total, start
        self.stream = stream or sys.stdout
        self.started = time.monotonic()
        self.bar = None
        if enabled and self.stream.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn(f"[bold]{label}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=Console(file=self.stream),
            )
            self.bar.start()
            self.task = self.bar.add_task("train", total=total, completed=start, info="")

    def update(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=step_summary(metrics))
        elif "tokens_per_s" in metrics:
            elapsed = time.monotonic() - self.started
            done = step - self.start  # steps this process ran (a resumed stage starts at `start`)
            eta = elapsed / done * (self.total - step) if done > 0 else 0.0
            self.line(
                f"step {step}/{self.total} {step_summary(metrics)} tokens/s {metrics['tokens_per_s']:.0f} "
                f"elapsed {clock(elapsed)} eta {clock(eta)}"
            )

    def validation(self, step: int, monitor: str, value: Optional[float], is_best: bool) -> None:
        if not self.enabled or value is None:
            return
        self.line(f"step {step}/{self.total} validation {monitor} {value:.4f}" + (" (new best)" if is_best else ""))

    def line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.console.print(f"{self.label} {text}", highlight=False, markup=False)
        else:
            print(f"{self.label} {text}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None  # later lines (the final validation) print plainly
