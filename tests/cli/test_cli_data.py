"""`wmtp data …` through Typer's CliRunner: exit codes, reports, and one-line errors naming file:line."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tests.unit.test_data_index import (
    BAD_LINE_IDS,
    BAD_LINES,
    BROKEN_INDEX_IDS,
    BROKEN_INDEXES,
    alpaca,
    broken_index_message,
    write_jsonl,
)
from tests.unit.test_data_prepare import (
    CODECONTESTS_SCHEMA,
    MBPP_SANITIZED_SCHEMA,
    MBPP_SCHEMA,
    contest_problem,
    write_codecontests_parquet,
    write_mbpp_parquet,
)
from wmtp.data.index import index_path, metadata_path
from wmtp_cli.main import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, ["data", *map(str, args)])


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert all(fragment in result.output for fragment in fragments), result.output


def assert_errors(result, *patterns: str) -> None:
    """Exit 2, no traceback, and each regex matches one whole `error: …` line of the output."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line.removeprefix("error: ") for line in result.output.splitlines() if line.startswith("error: ")]
    for pattern in patterns:
        assert any(re.fullmatch(pattern, line) for line in lines), (pattern, lines)


def test_data_help_lists_the_commands():
    result = run("--help")
    assert result.exit_code == 0
    for command in ("prepare", "index", "validate"):
        assert command in result.output
    prepare = run("prepare", "--help")
    for source in ("codecontests", "humaneval", "mbpp", "smoke"):
        assert source in prepare.output


def test_prepare_codecontests_prints_kept_and_dropped(tmp_path, micro_models):
    raw = write_codecontests_parquet(tmp_path / "raw")
    result = run(
        "prepare",
        "codecontests",
        "--raw",
        raw,
        "--out",
        tmp_path / "cc",
        "--tokenizer",
        micro_models["micro-mtp"],
        "--no-progress",
    )
    assert result.exit_code == 0, result.output
    assert "codecontests: prepared splits" in result.output
    assert "problem has no description" in result.output and "over the token budget" in result.output
    for split in ("train", "valid", "test"):
        assert (tmp_path / "cc" / "processed" / f"{split}.jsonl").is_file()
    assert run("validate", tmp_path / "cc").exit_code == 0


def test_prepare_mbpp_and_humaneval_then_validate(tmp_path):
    raw = write_mbpp_parquet(tmp_path / "raw")
    assert run("prepare", "mbpp", "--raw", raw, "--out", tmp_path / "sets" / "mbpp").exit_code == 0
    he = run("prepare", "humaneval", "--out", tmp_path / "sets" / "humaneval")
    assert he.exit_code == 0 and "164" in he.output and "dropped: none" in he.output
    result = run("validate", tmp_path / "sets")
    assert result.exit_code == 0, result.output
    assert result.output.count("ok: ") == 5  # mbpp train/test/valid/prompt + humaneval test


@pytest.mark.slow
def test_prepare_smoke_writes_train_and_valid(tmp_path, micro_models):
    result = run(
        "prepare", "smoke", "--out", tmp_path / "smoke", "--tokenizer", micro_models["micro-mtp"], "--limit", "8"
    )
    assert result.exit_code == 0, result.output
    assert "smoke: prepared splits" in result.output
    for split in ("train", "valid"):
        meta = json.loads((tmp_path / "smoke" / "processed" / f"{split}_metadata.json").read_text())
        assert meta["n_correct"] >= 1 and meta["n_incorrect"] >= 1


def test_index_command_writes_index_and_metadata(tmp_path, micro_models):
    path = write_jsonl(tmp_path / "mine.jsonl", [alpaca(i, correct=i % 2 == 0) for i in range(10)])
    result = run("index", path, "--tokenizer", micro_models["micro-mtp"])
    assert result.exit_code == 0, result.output
    assert "10 samples (5 correct, 5 incorrect), 160 bytes of index" in result.output
    assert index_path(path).is_file() and metadata_path(path).is_file()


def test_index_of_a_bad_line_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [alpaca(i) for i in range(4)], {2: '{"instruction": 1}'})
    assert_one_line_error(run("index", path), "bad.jsonl:2: ", "'instruction' must be a string")
    assert not index_path(path).exists()


@pytest.mark.parametrize("line,message", BAD_LINES, ids=BAD_LINE_IDS)
def test_every_bad_line_message_reaches_index_and_validate(tmp_path, line, message):
    path = write_jsonl(tmp_path / "t.jsonl", [alpaca(i) for i in range(5)], {3: line})
    assert_errors(run("index", path), re.escape(f"{path}:3: ") + message)
    assert not index_path(path).exists()
    assert_errors(
        run("validate", tmp_path),
        re.escape(f"{path}:3: ") + message,
        re.escape(f"{tmp_path}: 1 problem(s) in 1 of 1 file(s)"),
    )


def test_validate_reports_every_bad_line_and_a_tampered_file(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [alpaca(i) for i in range(5)])
    assert run("index", good).exit_code == 0
    write_jsonl(tmp_path / "bad.jsonl", [alpaca(i) for i in range(6)], {2: "{", 5: '{"task_id": "x"}'})
    data = good.read_bytes().replace(b"Write function number 3", b"Write function number 9")
    good.write_bytes(data)  # same size: only the SHA-256 and the fingerprint notice
    result = run("validate", tmp_path)
    assert_one_line_error(
        result,
        "bad.jsonl:2: not valid JSON",
        "bad.jsonl:5: missing key 'instruction'",
        "good.jsonl: SHA-256",
        "wmtp data index",
        "problem(s) in 2 of 2 file(s)",
    )


def test_validate_notices_a_missing_index(tmp_path):
    write_jsonl(tmp_path / "plain.jsonl", [alpaca(0)])
    assert_one_line_error(run("validate", tmp_path), "plain.jsonl: no index", "wmtp data index")


def test_validate_notices_an_index_that_disagrees_with_the_file(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [alpaca(i) for i in range(5)])
    assert run("index", path).exit_code == 0
    meta = json.loads(metadata_path(path).read_text())
    meta["n_correct"] = 2
    metadata_path(path).write_text(json.dumps(meta))
    assert_one_line_error(run("validate", tmp_path), "t_metadata.json: 'n_correct' is 2 but the file gives 5")


def indexed_file(tmp_path, n: int = 5):
    path = write_jsonl(tmp_path / "t.jsonl", [alpaca(i) for i in range(n)])
    assert run("index", path).exit_code == 0
    return path


def test_validate_names_the_line_where_the_index_disagrees(tmp_path):
    path = indexed_file(tmp_path)
    rows = np.load(index_path(path))
    rows["difficulty"][2] = 9
    np.save(index_path(path), rows)
    assert_errors(
        run("validate", tmp_path),
        re.escape(
            f"{path}:3: index difficulty is 9 but the line gives 1 (1 of 5 rows differ); run `wmtp data index {path}`"
        ),
    )


def test_validate_notices_a_line_added_after_indexing(tmp_path):
    path = indexed_file(tmp_path)
    with open(path, "a") as handle:
        handle.write(json.dumps(alpaca(5)) + "\n")
    assert_errors(
        run("validate", tmp_path),
        re.escape(f"{index_path(path)}: 5 rows but the file has 6 lines; run `wmtp data index {path}`"),
        re.escape(f"{path}: SHA-256 ") + ".+" + re.escape(" (changed after indexing); run `wmtp data index ") + ".+",
    )


def test_validate_lists_20_bad_lines_then_counts_the_rest(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [alpaca(i) for i in range(25)], {i: "{" for i in range(1, 26)})
    result = run("validate", tmp_path)
    assert_errors(
        result,
        re.escape(f"{path}:20: not valid JSON (") + ".+",
        re.escape(f"{path}: … and 5 more bad lines (only the first 20 are listed)"),
        re.escape(f"{tmp_path}: 21 problem(s) in 1 of 1 file(s)"),
    )
    assert f"{path}:21:" not in result.output


def test_validate_of_a_folder_without_jsonl(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    assert_errors(
        run("validate", tmp_path),
        re.escape(f"{tmp_path}: no .jsonl files found (searched recursively for prepared <split>.jsonl files)"),
    )


@pytest.mark.parametrize("breaks,pattern", BROKEN_INDEXES, ids=BROKEN_INDEX_IDS)
def test_validate_names_a_broken_index_or_metadata_file(tmp_path, breaks, pattern):
    path = indexed_file(tmp_path)
    breaks(path)
    assert_errors(run("validate", tmp_path), broken_index_message(path, pattern))


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["prepare", "codecontests", "--raw", "/nonexistent/cc"], ["/nonexistent/cc: raw dataset not found"]),
        (["prepare", "mbpp", "--raw", "/nonexistent/mbpp"], ["/nonexistent/mbpp: raw dataset not found"]),
        (
            ["prepare", "humaneval", "--raw", "/nonexistent/he.jsonl"],
            ["/nonexistent/he.jsonl: HumanEval file not found"],
        ),
        (["prepare", "smoke", "--tokenizer", "/nonexistent/model"], ["/nonexistent/model: no tokenizer"]),
        (["index", "/nonexistent/x.jsonl"], ["/nonexistent/x.jsonl: file not found"]),
        (["validate", "/nonexistent/dir"], ["/nonexistent/dir: not a directory"]),
    ],
)
def test_bad_paths_are_one_line(args, fragments, tmp_path):
    assert_one_line_error(run(*args, *(["--out", tmp_path / "o"] if args[0] == "prepare" else [])), *fragments)


def test_bad_max_tokens_is_named(tmp_path, micro_models):
    raw = write_codecontests_parquet(tmp_path / "raw")
    result = run(
        "prepare",
        "codecontests",
        "--raw",
        raw,
        "--out",
        tmp_path / "o",
        "--tokenizer",
        micro_models["micro-mtp"],
        "--max-tokens",
        "1",
    )
    assert_one_line_error(result, "--max-tokens: 1; expected ≥ 2")


def raw_parquet(tmp_path, rows: list[dict], schema: pa.Schema, name: str = "train.parquet"):
    (tmp_path / "raw").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp_path / "raw" / name)
    return tmp_path / "raw" / name


def with_field(schema: pa.Schema, name: str, kind: pa.DataType) -> pa.Schema:
    return schema.set(schema.get_field_index(name), pa.field(name, kind))


MBPP_ROW = {
    "task_id": 601,
    "text": "Add.",
    "code": "def add(a, b):\n    return a + b",
    "test_list": ["assert add(1, 2) == 3"],
    "test_setup_code": "",
    "challenge_test_list": [],
}
SANITIZED_ROW = {
    "source_file": "f",
    "task_id": 82,
    "prompt": "Volume.",
    "code": "x = 1",
    "test_imports": "import math",
    "test_list": ["assert x == 1"],
}


def bad_codecontests(tmp_path, **changes) -> list:
    row = {**contest_problem("1_A. Sum"), **changes}
    schema = CODECONTESTS_SCHEMA
    if isinstance(changes.get("solutions"), str):
        schema = with_field(schema, "solutions", pa.string())
    return ["codecontests", "--raw", raw_parquet(tmp_path, [row], schema)]


def bad_mbpp(tmp_path, row: dict, schema: pa.Schema) -> list:
    return ["mbpp", "--raw", raw_parquet(tmp_path, [row], schema)]


def raw_files(tmp_path, files: dict[str, bytes]):
    (tmp_path / "raw").mkdir()
    for name, content in files.items():
        (tmp_path / "raw" / name).write_bytes(content)
    return tmp_path / "raw"


def humaneval_raw(tmp_path) -> list:
    (tmp_path / "he.jsonl").write_text('{"task_id": "HumanEval/0",\n')
    return ["humaneval", "--raw", tmp_path / "he.jsonl"]


# (the `prepare` arguments, made in tmp_path; a regex for the whole error line, where {tmp} is tmp_path)
BAD_RAW = {
    "solutions-not-struct": (
        lambda t: bad_codecontests(t, solutions="print(1)"),
        r"{tmp}/raw/train\.parquet: row 0: 'solutions' is not "
        r"\{{language: \[int\], solution: \[str\]\}} \(got 'print\(1\)'\)",
    ),
    "difficulty-200": (
        lambda t: bad_codecontests(t, difficulty=200),
        r"{tmp}/raw/train\.parquet: row 0: 'difficulty' is 200; expected an integer 0\.\.127",
    ),
    "difficulty-null": (
        lambda t: bad_codecontests(t, difficulty=None),
        r"{tmp}/raw/train\.parquet: row 0: 'difficulty' is None; expected an integer 0\.\.127",
    ),
    "test_list-string": (
        lambda t: bad_mbpp(
            t, {**MBPP_ROW, "test_list": "assert add(1, 2) == 3"}, with_field(MBPP_SCHEMA, "test_list", pa.string())
        ),
        r"{tmp}/raw/train\.parquet: row 0: 'test_list' is not a list of strings "
        r"\(got 'assert add\(1, 2\) == 3'\)",
    ),
    "code-null": (
        lambda t: bad_mbpp(t, {**MBPP_ROW, "code": None}, MBPP_SCHEMA),
        r"{tmp}/raw/train\.parquet: row 0: 'code' is not a string \(got None\)",
    ),
    "test_imports-string": (
        lambda t: bad_mbpp(t, SANITIZED_ROW, with_field(MBPP_SANITIZED_SCHEMA, "test_imports", pa.string())),
        r"{tmp}/raw/train\.parquet: row 0: 'test_imports' is not a list of strings \(got 'import math'\)",
    ),
    "corrupt-parquet": (
        lambda t: ["mbpp", "--raw", raw_files(t, {"test.parquet": b"bogus\n"})],
        r"{tmp}/raw/test\.parquet: unreadable parquet file \(Parquet file size is 6 bytes.+\)",
    ),
    "empty-parquet": (
        lambda t: ["codecontests", "--raw", raw_files(t, {"train-00000-of-00001.parquet": b""})],
        r"{tmp}/raw/train-00000-of-00001\.parquet: unreadable parquet file \(.+\)",
    ),
    "corrupt-arrow": (
        lambda t: ["codecontests", "--raw", raw_files(t, {"valid.arrow": b"bogus"})],
        r"{tmp}/raw/valid\.arrow: unreadable arrow file \(.+\)",
    ),
    "no-raw-files": (
        lambda t: ["mbpp", "--raw", raw_files(t, {"README.md": b"# MBPP"})],
        r"{tmp}/raw: no \.parquet or \.arrow files found",
    ),
    "unsupported-type": (
        lambda t: ["mbpp", "--raw", raw_files(t, {"train.csv": b"a,b"}) / "train.csv"],
        r"{tmp}/raw/train\.csv: unsupported file type \(expected \.parquet or \.arrow\)",
    ),
    "humaneval-json": (humaneval_raw, r"{tmp}/he\.jsonl:1: not valid JSON \(Expecting .+\)"),
    "smoke-limit": (
        lambda t: ["smoke", "--limit", "0"],
        r"--limit: 0; expected at least 1 \(HumanEval problems to use\)",
    ),
}


@pytest.mark.parametrize("case", BAD_RAW, ids=list(BAD_RAW))
def test_bad_raw_data_is_one_line_and_nothing_is_written(tmp_path, micro_models, case):
    make_args, pattern = BAD_RAW[case]
    result = run(
        "prepare",
        *make_args(tmp_path),
        "--out",
        tmp_path / "out",
        "--tokenizer",
        micro_models["micro-mtp"],
        "--no-progress",
    )
    assert_errors(result, pattern.format(tmp=re.escape(str(tmp_path))))
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
