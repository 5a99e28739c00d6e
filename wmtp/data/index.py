"""The compact index beside every JSONL split, and its human-readable `*_metadata.json`.

For `DIR/train.jsonl`:

    DIR/train.index.npy       one packed numpy record per line, 16 bytes:
                              offset int64 · length uint32 · n_tokens uint16 · difficulty int8 · is_correct bool
    DIR/train_metadata.json   counts, correct/incorrect, difficulty histogram, sources, token stats,
                              SHA-256 of the JSONL, and a cheap fingerprint used to detect a stale index

`length` is the line's byte length including its newline; `n_tokens` is the record's token count
with the template of `wmtp.data.template` (0 when the index was built without a tokenizer, saturated
at 65535). Row `i` of the index is line `i + 1` of the file.

The metadata file is written last, so an index without one is never taken for a complete index.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from wmtp.common.files import atomic_output, file_fingerprint, write_json_atomic
from wmtp.common.progress import progress_bar
from wmtp.data.schema import DataError, json_type, parse_line
from wmtp.data.template import MAX_INDEXED_TOKENS, count_tokens

INDEX_FORMAT = "wmtp-index-v1"
INDEX_DTYPE = np.dtype(
    [("offset", "<i8"), ("length", "<u4"), ("n_tokens", "<u2"), ("difficulty", "i1"), ("is_correct", "?")]
)
assert INDEX_DTYPE.itemsize == 16
READ_BLOCK = 1 << 24  # bytes read per block while scanning a JSONL
CHUNK_ROWS = 1 << 16  # rows gathered in Python lists before they become a numpy chunk


def index_path(jsonl_path: str | Path) -> Path:
    path = Path(jsonl_path)
    return path.with_name(f"{path.stem}.index.npy")


def metadata_path(jsonl_path: str | Path) -> Path:
    path = Path(jsonl_path)
    return path.with_name(f"{path.stem}_metadata.json")


def rebuild_hint(jsonl_path: str | Path) -> str:
    return f"run `wmtp data index {jsonl_path}`"


# ----------------------------------------------------------------------------- scanning a JSONL


class LineScanner:
    """Iterate `(line_number, offset, raw_line)` over a JSONL read in large blocks, hashing as it goes.

    After a full pass, `sha256` and `size` describe the whole file. A last line without a newline is
    yielded as is (a truncated record then fails to parse and is reported, never skipped).
    """

    def __init__(self, path: str | Path, on_bytes=None):
        self.path = Path(path)
        self.digest = hashlib.sha256()
        self.size = 0
        self.on_bytes = on_bytes or (lambda n: None)

    @property
    def sha256(self) -> str:
        return self.digest.hexdigest()

    def __iter__(self) -> Iterator[tuple[int, int, bytes]]:
        line_number, offset, carry = 0, 0, b""
        with open(self.path, "rb") as handle:
            while block := handle.read(READ_BLOCK):
                self.digest.update(block)
                self.size += len(block)
                self.on_bytes(len(block))
                lines = (carry + block).split(b"\n")
                carry = lines.pop()
                for body in lines:
                    line_number += 1
                    yield line_number, offset, body + b"\n"
                    offset += len(body) + 1
        if carry:
            yield line_number + 1, offset, carry


# ----------------------------------------------------------------------------- building


class IndexBuilder:
    """Accumulates one index row per record, in numpy chunks (never a Python object per line)."""

    def __init__(self):
        self.chunks: list[np.ndarray] = []
        self.pending: list[tuple[int, int, int, int, bool]] = []
        self.sources: Counter[str] = Counter()

    def add(self, offset: int, length: int, record: dict, n_tokens: int = 0) -> None:
        metadata = record["metadata"]
        self.pending.append(
            (offset, length, min(n_tokens, MAX_INDEXED_TOKENS), metadata["difficulty"], record["is_correct"])
        )
        self.sources[metadata["source"]] += 1
        if len(self.pending) >= CHUNK_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.chunks.append(np.array(self.pending, dtype=INDEX_DTYPE))
            self.pending = []

    def finish(self) -> np.ndarray:
        self.flush()
        return np.concatenate(self.chunks) if self.chunks else np.empty(0, dtype=INDEX_DTYPE)


def scan_into_index(
    jsonl_path: Path, tokenizer=None, show_progress: bool = False
) -> tuple[np.ndarray, Counter, LineScanner]:
    """Parse every line of `jsonl_path` (a bad line raises `DataError` naming file:line) into index rows."""
    if not jsonl_path.is_file():
        raise DataError(f"{jsonl_path}: file not found (expected an Alpaca JSONL)")
    builder = IndexBuilder()
    with progress_bar(f"indexing {jsonl_path.name}", jsonl_path.stat().st_size, show_progress, unit="bytes") as advance:
        scanner = LineScanner(jsonl_path, on_bytes=advance)
        for line_number, offset, raw in scanner:
            record = parse_line(raw, jsonl_path, line_number)
            n_tokens = count_tokens(tokenizer, record) if tokenizer is not None else 0
            builder.add(offset, len(raw), record, n_tokens)
    return builder.finish(), builder.sources, scanner


def build_index(
    jsonl_path: str | Path, tokenizer=None, extra_metadata: dict | None = None, show_progress: bool = False
) -> "DatasetIndex":
    """Scan `jsonl_path` once and write `<stem>.index.npy` and `<stem>_metadata.json` beside it.

    With a `tokenizer`, `n_tokens` holds each record's token count; without one it is 0.
    `extra_metadata` (e.g. a preparation's drop report) is stored in the metadata file.
    """
    jsonl_path = Path(jsonl_path)
    rows, sources, scanner = scan_into_index(jsonl_path, tokenizer, show_progress)
    return write_index(jsonl_path, rows, sources, scanner.sha256, tokenizer, extra_metadata)


def write_index(
    jsonl_path: Path,
    rows: np.ndarray,
    sources: Counter,
    sha256: str,
    tokenizer=None,
    extra_metadata: dict | None = None,
) -> "DatasetIndex":
    """Write the index, then the metadata (last, so it marks a complete index)."""
    with atomic_output(index_path(jsonl_path)) as handle:
        np.save(handle, rows, allow_pickle=False)
    metadata = summarize(jsonl_path, rows, sources, sha256, tokenizer)
    metadata.update(extra_metadata or {})
    write_json_atomic(metadata_path(jsonl_path), metadata)
    return DatasetIndex(rows, jsonl_path, metadata)


def summarize(jsonl_path: Path, rows: np.ndarray, sources: Counter, sha256: str, tokenizer=None) -> dict:
    """The human-readable facts about one split (what `*_metadata.json` holds)."""
    difficulties, counts = np.unique(rows["difficulty"], return_counts=True)
    n_correct = int(rows["is_correct"].sum())
    tokens = rows["n_tokens"].astype(np.int64)
    return {
        "file": jsonl_path.name,
        "n_samples": int(len(rows)),
        "n_correct": n_correct,
        "n_incorrect": int(len(rows)) - n_correct,
        "difficulty_histogram": {str(int(d)): int(c) for d, c in zip(difficulties, counts)},
        "sources": dict(sorted(sources.items())),
        "tokens": None
        if tokenizer is None
        else {
            "tokenizer": str(getattr(tokenizer, "path", "")),
            "total": int(tokens.sum()),
            "max": int(tokens.max(initial=0)),
            "mean": round(float(tokens.mean()), 2) if len(tokens) else 0.0,
        },
        "jsonl_bytes": jsonl_path.stat().st_size,
        "jsonl_sha256": sha256,
        "jsonl_fingerprint": file_fingerprint(jsonl_path),
        "index_file": index_path(jsonl_path).name,
        "index_format": INDEX_FORMAT,
        "index_bytes_per_sample": INDEX_DTYPE.itemsize,
    }


# ----------------------------------------------------------------------------- loading


@dataclass
class DatasetIndex:
    """The index of one JSONL split: numpy arrays with one entry per line (row i = line i + 1)."""

    rows: np.ndarray  # structured, INDEX_DTYPE
    jsonl_path: Path
    metadata: dict = field(default_factory=dict)

    @property
    def offsets(self) -> np.ndarray:
        return self.rows["offset"]

    @property
    def lengths(self) -> np.ndarray:
        return self.rows["length"]

    @property
    def n_tokens(self) -> np.ndarray:
        return self.rows["n_tokens"]

    @property
    def difficulty(self) -> np.ndarray:
        return self.rows["difficulty"]

    @property
    def is_correct(self) -> np.ndarray:
        return self.rows["is_correct"]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def nbytes(self) -> int:
        """Resident bytes of the arrays (16 per sample)."""
        return int(self.rows.nbytes)

    @classmethod
    def load(cls, jsonl_path: str | Path) -> "DatasetIndex":
        """Load the index of `jsonl_path`; a missing, stale or corrupt index raises `DataError`."""
        jsonl_path = Path(jsonl_path)
        if not jsonl_path.is_file():
            raise DataError(f"{jsonl_path}: file not found (expected an Alpaca JSONL with its index beside it)")
        metadata = read_metadata(jsonl_path)
        check_fresh(jsonl_path, metadata)
        rows = read_rows(jsonl_path)
        if len(rows) != metadata.get("n_samples"):
            raise DataError(
                f"{index_path(jsonl_path)}: {len(rows)} rows but the metadata says "
                f"{metadata.get('n_samples')}; {rebuild_hint(jsonl_path)}"
            )
        return cls(rows, jsonl_path, metadata)


def read_metadata(jsonl_path: Path) -> dict:
    meta_file = metadata_path(jsonl_path)
    if not meta_file.is_file() or not index_path(jsonl_path).is_file():
        raise DataError(
            f"{jsonl_path}: no index (expected {index_path(jsonl_path).name} and {meta_file.name} "
            f"beside it); {rebuild_hint(jsonl_path)}"
        )
    try:
        metadata = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{meta_file}: not valid JSON ({exc}); {rebuild_hint(jsonl_path)}") from None
    if not isinstance(metadata, dict):
        raise DataError(f"{meta_file}: expected a JSON object, got {json_type(metadata)}; {rebuild_hint(jsonl_path)}")
    if metadata.get("index_format") != INDEX_FORMAT:
        raise DataError(
            f"{meta_file}: index_format is {metadata.get('index_format')!r}; expected {INDEX_FORMAT!r}; "
            f"{rebuild_hint(jsonl_path)}"
        )
    return metadata


def check_fresh(jsonl_path: Path, metadata: dict) -> None:
    """The JSONL must be the one indexed: same size and same fingerprint (head and tail hashes)."""
    size = jsonl_path.stat().st_size
    if size != metadata.get("jsonl_bytes") or file_fingerprint(jsonl_path) != metadata.get("jsonl_fingerprint"):
        raise DataError(
            f"{jsonl_path}: index is stale (the file changed after it was indexed); {rebuild_hint(jsonl_path)}"
        )


def read_rows(jsonl_path: Path) -> np.ndarray:
    path = index_path(jsonl_path)
    try:
        rows = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: unreadable index ({exc}); {rebuild_hint(jsonl_path)}") from None
    if rows.dtype != INDEX_DTYPE or rows.ndim != 1:
        raise DataError(
            f"{path}: unexpected index layout {rows.dtype} {rows.shape} (expected a 1-D array of "
            f"{INDEX_DTYPE.itemsize}-byte {INDEX_FORMAT} records); {rebuild_hint(jsonl_path)}"
        )
    return rows
