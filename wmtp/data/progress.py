"""Rich progress bars for the long data passes (on stderr, so stdout keeps only the results)."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

Advance = Callable[[int], None]


def _ignore(_: int = 1) -> None:
    return None


@contextlib.contextmanager
def progress_bar(description: str, total: int | None = None, enabled: bool = True, unit: str = "items") -> Iterator[Advance]:
    """Yield `advance(n)`; a bar on stderr when `enabled`. `unit="bytes"` shows a transfer speed."""
    if not enabled:
        yield _ignore
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
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), count_column,
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)
