"""Streaming reads of Hugging Face dataset files (parquet, or arrow from `save_to_disk` / the cache).

Rows come out in small record batches, only the columns asked for, so a 15 GB split is never in
memory. The split of each file comes from its name (`train-00000-of-00039.parquet`) or its folder
(`train/data-00000-of-00001.arrow`).
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from wmtp.data.schema import DataError

RAW_SUFFIXES = (".parquet", ".arrow")
SPLIT_ALIASES = {"train": "train", "valid": "valid", "validation": "valid", "test": "test", "prompt": "prompt"}
BATCH_ROWS = 64  # CodeContests rows carry many solutions and tests: keep batches small


def split_of(path: Path) -> str | None:
    """`train` / `valid` / `test` / `prompt` from a file or folder name, or None."""
    for name in (path.name, path.parent.name):
        match = re.match(r"^(train|validation|valid|test|prompt)(?=$|[-_.])", name)
        if match:
            return SPLIT_ALIASES[match.group(1)]
    return None


def find_split_files(raw: Path) -> dict[str, list[Path]]:
    """Raw files grouped by split; a file whose split cannot be told is an error, not a silent skip."""
    if not raw.exists():
        raise DataError(f"{raw}: raw dataset not found (expected a .parquet/.arrow file or a folder of them)")
    files = [raw] if raw.is_file() else sorted(p for p in raw.rglob("*") if p.suffix in RAW_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"{raw}: no .parquet or .arrow files found")
    splits: dict[str, list[Path]] = {}
    for path in files:
        if path.suffix not in RAW_SUFFIXES:
            raise DataError(f"{path}: unsupported file type (expected .parquet or .arrow)")
        split = split_of(path)
        if split is None:
            raise DataError(
                f"{path}: cannot tell its split (expected a name or folder starting with train, valid, "
                f"validation, test or prompt)"
            )
        splits.setdefault(split, []).append(path)
    return splits


def check_files(paths: list[Path], required: list[str], expected: str) -> int | None:
    """Open every file and check its columns before anything is written; the total rows, or None.

    A corrupt, empty or truncated file, or one without the `required` columns, raises `DataError`
    naming it. The row count comes from parquet footers; arrow streams do not say it cheaply (None).
    """
    total: int | None = 0
    for path in paths:
        with unreadable_as_data_error(path):
            if path.suffix == ".parquet":
                parquet = pq.ParquetFile(path)
                check_columns(path, parquet.schema_arrow, required, expected)
                total = None if total is None else total + parquet.metadata.num_rows
            else:
                check_columns(path, open_arrow(path).schema, required, expected)
                total = None
    return total


def check_columns(path: Path, schema: pa.Schema, required: list[str], expected: str) -> None:
    missing = [name for name in required if name not in schema.names]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; expected the Hugging Face {expected} schema")


def iter_rows(path: Path, columns: list[str], required: list[str], expected: str) -> Iterator[dict]:
    """Rows of one file as dicts of the `columns` present (all `required` must be), batch by batch."""
    with unreadable_as_data_error(path):
        if path.suffix == ".parquet":
            yield from _parquet_rows(path, columns, required, expected)
        else:
            yield from _arrow_rows(path, columns, required, expected)


@contextlib.contextmanager
def unreadable_as_data_error(path: Path) -> Iterator[None]:
    """pyarrow's errors for a file that is not valid parquet/arrow become one line naming the file."""
    try:
        yield
    except (pa.ArrowException, OSError) as exc:  # ArrowInvalid, ArrowNotImplementedError (codec), IO errors
        raise DataError(f"{path}: unreadable {path.suffix[1:]} file ({exc})") from None


def _parquet_rows(path: Path, columns: list[str], required: list[str], expected: str) -> Iterator[dict]:
    parquet = pq.ParquetFile(path)
    schema = parquet.schema_arrow
    check_columns(path, schema, required, expected)
    present = [name for name in columns if name in schema.names]
    for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=present):
        yield from batch.to_pylist()


def _arrow_rows(path: Path, columns: list[str], required: list[str], expected: str) -> Iterator[dict]:
    reader = open_arrow(path)
    check_columns(path, reader.schema, required, expected)
    present = [name for name in columns if name in reader.schema.names]
    batches = (
        reader
        if isinstance(reader, pa.ipc.RecordBatchStreamReader)
        else (reader.get_batch(i) for i in range(reader.num_record_batches))
    )
    for batch in batches:
        for start in range(0, batch.num_rows, BATCH_ROWS):
            yield from batch.slice(start, BATCH_ROWS).select(present).to_pylist()


def open_arrow(path: Path) -> pa.ipc.RecordBatchStreamReader | pa.ipc.RecordBatchFileReader:
    """An Arrow IPC stream (what `datasets` writes) or, failing that, an Arrow IPC file; reads only the schema."""
    source = pa.memory_map(str(path), "r")
    try:
        return pa.ipc.open_stream(source)
    except pa.ArrowInvalid:
        source.seek(0)
        return pa.ipc.open_file(source)
