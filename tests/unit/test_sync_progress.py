"""The sync progress bar (wmtp_storage_sync.engine._Progress): bytes done of the total and a bytes/s rate on a
terminal; nothing at all on a pipe or log."""

from __future__ import annotations

import io
import re
import time

from rich.console import Console

from wmtp_storage_sync.engine import _Progress


def terminal() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, color_system=None, width=120), out


def last_frame(out: io.StringIO) -> str:
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())  # cursor moves of the live display
    return [line for line in re.split(r"[\r\n]", text) if line.strip()][-1]


def test_bar_reports_bytes_and_a_rate():
    console, out = terminal()
    with _Progress(True, "upload", 3_000_000, console=console) as progress:
        progress.advance(1_000_000)
        time.sleep(0.2)
        progress.advance(1_000_000)
        progress.skip(1_000_000)  # counted in the total, found unchanged: the total shrinks
    frame = last_frame(out)
    assert frame.startswith("upload")
    assert "2.0/2.0 MB" in frame, frame
    rate = re.search(r"([0-9.]+) (k|M|G)?B/s", frame)
    assert rate and float(rate.group(1)) > 0, frame


def test_disabled_or_not_a_terminal_prints_nothing():
    out = io.StringIO()
    pipe = Console(file=out, force_terminal=False)
    for enabled, total, console in ((True, 10, pipe), (False, 10, terminal()[0]), (True, 0, terminal()[0])):
        with _Progress(enabled, "upload", total, console=console) as progress:
            progress.advance(5)
            progress.skip(5)
        assert progress._bar is None
    assert out.getvalue() == ""
