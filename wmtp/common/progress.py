"""Progress of the long data passes, on stderr so stdout keeps only the results: a rich bar on a
terminal, plain lines elsewhere (a container log, CI, a pipe), where a bar would print nothing until
it ends — `data prepare smoke` runs for minutes."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable, Iterator, TextIO

PLAIN_EVERY_S = 30.0  # a plain line at least this often while work advances …
PLAIN_STEPS = 10  # … and at every tenth of the total

Advance = Callable[[int], None]


def _ignore(_: int = 1) -> None:
    return None


@contextlib.contextmanager
def progress_bar(
    description: str, total: int | None = None, enabled: bool = True, unit: str = "items"
) -> Iterator[Advance]:
    """Yield `advance(n)`; a bar on stderr when `enabled`. `unit="bytes"` shows a transfer speed."""
    if not enabled:
        yield _ignore
        return
    if not sys.stderr.isatty():
        with plain_progress(description, total, unit, sys.stderr) as advance:
            yield advance
        return
    # Imported here: wmtp.data.index (hence spec resolution, `wmtp train --dry-run`) imports this module.
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    count_column = TransferSpeedColumn() if unit == "bytes" else MofNCompleteColumn()
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        count_column,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


def _amount(n: float, unit: str) -> str:
    return f"{n / 2**20:.1f} MiB" if unit == "bytes" else f"{int(n)}"


@contextlib.contextmanager
def plain_progress(description: str, total: int | None, unit: str, stream: TextIO) -> Iterator[Advance]:
    """`advance(n)` printing `description: done/total (p%) elapsed Ns` at each tenth and every 30 s."""
    started = last_print = time.monotonic()
    state = {"done": 0, "tenth": 0}
    of_total = f" of {_amount(total, unit)}" if total else ""
    print(f"{description}: started{of_total}", file=stream, flush=True)

    def advance(n: int = 1) -> None:
        nonlocal last_print
        state["done"] += n
        now = time.monotonic()
        tenth = int(state["done"] * PLAIN_STEPS / total) if total else 0
        if tenth > state["tenth"] or now - last_print >= PLAIN_EVERY_S:
            state["tenth"], last_print = max(tenth, state["tenth"]), now
            share = f" ({100 * state['done'] / total:.0f}%)" if total else ""
            print(
                f"{description}: {_amount(state['done'], unit)}{of_total}{share} elapsed {now - started:.0f}s",
                file=stream,
                flush=True,
            )

    yield advance
    print(f"{description}: done in {time.monotonic() - started:.0f}s", file=stream, flush=True)
