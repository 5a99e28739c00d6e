"""`JsonlSamples`: chosen rows of a JSONL split, read by seek + read of each line, never the whole file.

A plain map-style class (`__len__` + `__getitem__`), not a `torch.utils.data.Dataset` subclass;
`torch.utils.data.DataLoader` accepts it as is (workers included).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from wmtp.data.index import DatasetIndex
from wmtp.data.schema import DataError, parse_line


class JsonlSamples:
    """`samples[i]` is the parsed record of line `rows[i] + 1` of `jsonl_path`.

    A plain map-style class, not a torch `Dataset`: `__len__` and `__getitem__` are all a
    `DataLoader` needs, and leaving torch out means reading data never imports it.

    Only the offsets and lengths of the chosen rows stay in memory (12 bytes each). The file is
    opened lazily once per process, so DataLoader workers each get their own handle. A line that
    is not a valid Alpaca record raises `DataError` naming `file:line`.
    """

    def __init__(self, jsonl_path: str | Path, rows: np.ndarray, index: DatasetIndex | None = None):
        self.jsonl_path = Path(jsonl_path)
        index = index if index is not None else DatasetIndex.load(self.jsonl_path)
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 1:
            raise DataError(f"{self.jsonl_path}: rows must be a 1-D array of row numbers, got shape {rows.shape}")
        if len(rows) and (rows.min() < 0 or rows.max() >= len(index)):
            raise DataError(
                f"{self.jsonl_path}: row {int(rows.max()) if rows.max() >= len(index) else int(rows.min())} "
                f"is out of range; the file has {len(index)} rows"
            )
        self.rows = rows
        self.offsets = index.offsets[rows].copy()
        self.lengths = index.lengths[rows].copy()
        self._handle = None
        self._handle_pid = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        line_number = int(self.rows[i]) + 1
        raw = self.read_line(int(self.offsets[i]), int(self.lengths[i]))
        if len(raw) != int(self.lengths[i]):
            raise DataError(
                f"{self.jsonl_path}:{line_number}: line is cut short (file truncated after indexing?); "
                f"run `wmtp data index {self.jsonl_path}`"
            )
        return parse_line(raw, self.jsonl_path, line_number)

    def read_line(self, offset: int, length: int) -> bytes:
        handle = self.file_handle()
        handle.seek(offset)
        return handle.read(length)

    def file_handle(self):
        # A handle inherited across fork shares its file position with the parent: reopen per process.
        if self._handle is None or self._handle_pid != os.getpid():
            self._handle = open(self.jsonl_path, "rb")
            self._handle_pid = os.getpid()
        return self._handle

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handle"] = None
        state["_handle_pid"] = None
        return state

    def __del__(self):
        handle = getattr(self, "_handle", None)
        if handle is not None and self._handle_pid == os.getpid():
            handle.close()
