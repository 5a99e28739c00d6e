"""Streaming reads of Hugging Face dataset files (parquet, or arrow from `save_to_disk` / the cache).

Rows come out in small record batches, only the columns asked for, so a 15 GB split is never in
memory. The split of each file comes from its name (`train-00000-of-00039.parquet`) or its folder
(`train/data-00000-of-00001.arrow`).
"""

from __future__ import annotations

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
            raise DataError(f"{path}: cannot tell its split (expected a name or folder starting with train, valid, "
                            f"validation, test or prompt)")
        splits.setdefault(split, []).append(path)
    return splits


def count_rows(paths: list[Path]) -> int | None:
    """Rows in the files when the format says so cheaply (parquet footers), else None."""
    total = 0
    for path in paths:
        if path.suffix != ".parquet":
            return None
        total += pq.ParquetFile(path).metadata.num_rows
    return total


def check_columns(path: Path, schema: pa.Schema, required: list[str], expected: str) -> None:
    missing = [name for name in required if name not in schema.names]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; expected the Hugging Face {expected} schema")


def iter_rows(path: Path, columns: list[str], required: list[str], expected: str) -> Iterator[dict]:
    """Rows of one file as dicts of the `columns` present (all `required` must be), batch by batch."""
    try:
        if path.suffix == ".parquet":
            yield from _parquet_rows(path, columns, required, expected)
        else:
            yield from _arrow_rows(path, columns, required, expected)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: unreadable {path.suffix[1:]} file ({exc})") from None


def _parquet_rows(path: Path, columns: list[str], required: list[str], expected: str) -> Iterator[dict]:
    parquet = pq.ParquetFile(path)
    schema = parquet.schema_arrow
    check_columns(path, schema, required, expected)
    present = [name for name in columns if name in schema.names]
    for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=present):
        yield from batch.to_pylist()


def _arrow_rows(path: Path, columns: list[str], required: list[str], expected: str) -> Iterator[dict]:
    source = pa.memory_map(str(path), "r")
    try:
        reader = pa.ipc.open_stream(source)  # what `datasets` writes
    except pa.ArrowInvalid:
        source.seek(0)
        reader = pa.ipc.open_file(source)
    check_columns(path, reader.schema, required, expected)
    present = [name for name in columns if name in reader.schema.names]
    batches = reader if isinstance(reader, pa.ipc.RecordBatchStreamReader) else (
        reader.get_batch(i) for i in range(reader.num_record_batches))
    for batch in batches:
        for start in range(0, batch.num_rows, BATCH_ROWS):
            yield from batch.slice(start, BATCH_ROWS).select(present).to_pylist()
