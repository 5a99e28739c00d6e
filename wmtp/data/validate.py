"""`wmtp data validate DIR`: every line's schema, the index against the file, and the file's SHA-256.

Problems are collected, not raised, so one run lists every bad line (up to a cap per file), each as
one message naming `file:line` (or the index / metadata file) and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wmtp.common.progress import progress_bar
from wmtp.data.index import (
    INDEX_DTYPE,
    IndexBuilder,
    LineScanner,
    index_path,
    metadata_path,
    read_metadata,
    read_rows,
    rebuild_hint,
)
from wmtp.data.schema import DataError, parse_line
from wmtp.data.template import count_tokens

MAX_LINE_PROBLEMS = 20  # bad lines listed per file before the rest are only counted


@dataclass
class FileCheck:
    """The result of validating one JSONL split."""

    path: Path
    n_lines: int = 0
    problems: list[str] = field(default_factory=list)
    bad_lines: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def find_jsonl_files(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory (expected a prepared dataset folder)")
    files = sorted(p for p in directory.rglob("*.jsonl") if p.is_file())
    if not files:
        raise DataError(f"{directory}: no .jsonl files found (searched recursively for prepared <split>.jsonl files)")
    return files


def validate_dir(directory: str | Path, tokenizer=None, show_progress: bool = False) -> list[FileCheck]:
    """Validate every `*.jsonl` under `directory` (token counts too when a tokenizer is given)."""
    return [validate_file(path, tokenizer, show_progress) for path in find_jsonl_files(directory)]


def validate_file(jsonl_path: str | Path, tokenizer=None, show_progress: bool = False) -> FileCheck:
    jsonl_path = Path(jsonl_path)
    check = FileCheck(jsonl_path)
    builder = IndexBuilder()
    with progress_bar(
        f"validating {jsonl_path.name}", jsonl_path.stat().st_size, show_progress, unit="bytes"
    ) as advance:
        scanner = LineScanner(jsonl_path, on_bytes=advance)
        for line_number, offset, raw in scanner:
            check.n_lines = line_number
            try:
                record = parse_line(raw, jsonl_path, line_number)
            except DataError as exc:
                note_bad_line(check, str(exc))
                continue
            builder.add(offset, len(raw), record, count_tokens(tokenizer, record) if tokenizer is not None else 0)
    if check.bad_lines > MAX_LINE_PROBLEMS:
        check.problems.append(
            f"{jsonl_path}: … and {check.bad_lines - MAX_LINE_PROBLEMS} more bad lines "
            f"(only the first {MAX_LINE_PROBLEMS} are listed)"
        )
    if check.bad_lines:
        return check  # the index of a file with bad lines is meaningless: fix the lines first
    check.problems.extend(index_problems(jsonl_path, builder.finish(), scanner.sha256, tokenizer is not None))
    return check


def note_bad_line(check: FileCheck, message: str) -> None:
    check.bad_lines += 1
    if check.bad_lines <= MAX_LINE_PROBLEMS:
        check.problems.append(message)


def index_problems(jsonl_path: Path, scanned: np.ndarray, sha256: str, compare_tokens: bool) -> list[str]:
    """Differences between the stored index/metadata and what the file really holds."""
    try:
        metadata = read_metadata(jsonl_path)
        stored = read_rows(jsonl_path)
    except DataError as exc:
        return [str(exc)]
    meta_file = metadata_path(jsonl_path)
    problems = []
    if metadata.get("jsonl_sha256") != sha256:
        problems.append(
            f"{jsonl_path}: SHA-256 {sha256[:16]}… differs from {meta_file.name}'s "
            f"{str(metadata.get('jsonl_sha256'))[:16]}… (changed after indexing); {rebuild_hint(jsonl_path)}"
        )
    if len(stored) != len(scanned):
        problems.append(
            f"{index_path(jsonl_path)}: {len(stored)} rows but the file has {len(scanned)} lines; "
            f"{rebuild_hint(jsonl_path)}"
        )
        return problems
    fields = [name for name in INDEX_DTYPE.names if compare_tokens or name != "n_tokens"]
    for name in fields:
        differs = np.flatnonzero(stored[name] != scanned[name])
        if len(differs):
            row = int(differs[0])
            problems.append(
                f"{jsonl_path}:{row + 1}: index {name} is {stored[name][row]} but the line gives "
                f"{scanned[name][row]} ({len(differs)} of {len(stored)} rows differ); {rebuild_hint(jsonl_path)}"
            )
    problems.extend(metadata_count_problems(meta_file, metadata, scanned))
    return problems


def metadata_count_problems(meta_file: Path, metadata: dict, scanned: np.ndarray) -> list[str]:
    n_correct = int(scanned["is_correct"].sum())
    difficulties, counts = np.unique(scanned["difficulty"], return_counts=True)
    expected = {
        "n_samples": len(scanned),
        "n_correct": n_correct,
        "n_incorrect": len(scanned) - n_correct,
        "difficulty_histogram": {str(int(d)): int(c) for d, c in zip(difficulties, counts)},
    }
    return [
        f"{meta_file}: '{key}' is {metadata.get(key)!r} but the file gives {value!r}"
        for key, value in expected.items()
        if metadata.get(key) != value
    ]
