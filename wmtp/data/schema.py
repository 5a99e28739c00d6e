"""The Alpaca record every prepared split holds, and the checks that name file:line when a line is bad.

One JSON object per line:

    {"instruction": str, "input": str, "output": str, "task_id": str, "is_correct": bool,
     "metadata": {"source": str, "difficulty": int 0..127, "has_tests": bool, ...}}

`difficulty` 0 means unknown. `metadata` may carry more keys (evaluation sets keep their tests there).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from wmtp.errors import WmtpError

REQUIRED_TEXT_FIELDS = ("instruction", "input", "output", "task_id")
DIFFICULTY_MIN, DIFFICULTY_MAX = 0, 127  # stored as int8 in the index


class DataError(WmtpError):
    """A dataset file, line, index or option is malformed; the message names file:line or the key."""


def where(path: str | Path, line_number: int | None = None) -> str:
    """`file` or `file:line` (1-based), the prefix of every data error message."""
    return f"{path}" if line_number is None else f"{path}:{line_number}"


def is_valid_record(record: Any) -> bool:
    """The common case in one expression (the index checks millions of lines); `record_problem` says why not."""
    try:
        metadata = record["metadata"]
        return (
            type(record["instruction"]) is str
            and type(record["input"]) is str
            and type(record["output"]) is str
            and type(record["task_id"]) is str
            and type(record["is_correct"]) is bool
            and type(metadata) is dict
            and type(metadata["source"]) is str
            and type(metadata["has_tests"]) is bool
            and type(metadata["difficulty"]) is int
            and DIFFICULTY_MIN <= metadata["difficulty"] <= DIFFICULTY_MAX
        )
    except (KeyError, TypeError, IndexError):
        return False


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type (what a user sees in the file)."""
    names = {
        type(None): "null",
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
    }
    return names.get(type(value), type(value).__name__)


def record_problem(record: Any) -> str | None:
    """What is wrong with one parsed line as an Alpaca record, or None when it is valid."""
    if is_valid_record(record):
        return None
    if not isinstance(record, dict):
        return f"expected a JSON object, got {json_type(record)}"
    for name in REQUIRED_TEXT_FIELDS:
        if name not in record:
            return f"missing key '{name}' (expected a string)"
        if not isinstance(record[name], str):
            return f"'{name}' must be a string, got {json_type(record[name])}"
    if "is_correct" not in record:
        return "missing key 'is_correct' (expected true or false)"
    if not isinstance(record["is_correct"], bool):
        return f"'is_correct' must be true or false, got {json_type(record['is_correct'])}"
    if "metadata" not in record:
        return "missing key 'metadata' (expected an object {source, difficulty, has_tests})"
    return metadata_problem(record["metadata"])


METADATA_FIELDS = {  # key: (what it must be, its Python type)
    "source": ("a string", str),
    "difficulty": (f"an integer {DIFFICULTY_MIN}..{DIFFICULTY_MAX}", int),
    "has_tests": ("true or false", bool),
}


def metadata_problem(metadata: Any) -> str | None:
    if not isinstance(metadata, dict):
        return f"'metadata' must be an object {{source, difficulty, has_tests}}, got {json_type(metadata)}"
    for name, (expected, kind) in METADATA_FIELDS.items():
        if name not in metadata:
            return f"missing key 'metadata.{name}' (expected {expected})"
        value = metadata[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"'metadata.{name}' must be {expected}, got {json_type(value)}"
    if not DIFFICULTY_MIN <= metadata["difficulty"] <= DIFFICULTY_MAX:
        return (
            f"'metadata.difficulty' is {metadata['difficulty']}"
            f"; expected {DIFFICULTY_MIN}..{DIFFICULTY_MAX} (0 = unknown)"
        )
    return None


def parse_line(raw: bytes, path: str | Path, line_number: int) -> dict:
    """Parse and check one JSONL line; a bad line raises `DataError` naming `file:line`."""
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{where(path, line_number)}: not UTF-8 ({exc})") from None
    except json.JSONDecodeError as exc:
        if not raw.strip():
            raise DataError(f"{where(path, line_number)}: empty line (expected one JSON object per line)") from None
        raise DataError(f"{where(path, line_number)}: not valid JSON ({exc}); line truncated or malformed") from None
    if is_valid_record(record):
        return record
    raise DataError(f"{where(path, line_number)}: {record_problem(record)}")


def make_record(
    instruction: str,
    input_text: str,
    output: str,
    task_id: str,
    is_correct: bool,
    source: str,
    difficulty: int,
    has_tests: bool,
    **extra_metadata: Any,
) -> dict:
    """An Alpaca record in the project's schema (extra keyword arguments go into `metadata`)."""
    return {
        "instruction": instruction,
        "input": input_text,
        "output": output,
        "task_id": task_id,
        "is_correct": bool(is_correct),
        "metadata": {"source": source, "difficulty": int(difficulty), "has_tests": bool(has_tests), **extra_metadata},
    }
