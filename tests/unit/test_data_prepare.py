"""Preparation from raw fixtures in the real Hugging Face schemas (CodeContests, MBPP) and the real HumanEval."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wmtp.data.index import DatasetIndex
from wmtp.data.prepare import prepare_codecontests, prepare_humaneval, prepare_mbpp, processed_path
from wmtp.data.schema import DataError

TESTS = pa.struct([("input", pa.list_(pa.string())), ("output", pa.list_(pa.string()))])
SOLUTIONS = pa.struct([("language", pa.list_(pa.int64())), ("solution", pa.list_(pa.string()))])
CODECONTESTS_SCHEMA = pa.schema(
    [
        ("name", pa.string()),
        ("description", pa.string()),
        ("public_tests", TESTS),
        ("private_tests", TESTS),
        ("generated_tests", TESTS),
        ("source", pa.int64()),
        ("difficulty", pa.int64()),
        ("solutions", SOLUTIONS),
        ("incorrect_solutions", SOLUTIONS),
        ("cf_contest_id", pa.int64()),
        ("cf_index", pa.string()),
        ("cf_points", pa.float32()),
        ("cf_rating", pa.int32()),
        ("cf_tags", pa.list_(pa.string())),
        ("is_description_translated", pa.bool_()),
        ("untranslated_description", pa.string()),
        ("time_limit", pa.struct([("seconds", pa.int64()), ("nanos", pa.int64())])),
        ("memory_limit_bytes", pa.int64()),
        ("input_file", pa.string()),
        ("output_file", pa.string()),
    ]
)
MBPP_SCHEMA = pa.schema(
    [
        ("task_id", pa.int32()),
        ("text", pa.string()),
        ("code", pa.string()),
        ("test_list", pa.list_(pa.string())),
        ("test_setup_code", pa.string()),
        ("challenge_test_list", pa.list_(pa.string())),
    ]
)
PY2, CPP, PY3, JAVA = 1, 2, 3, 4


def contest_problem(
    name: str,
    description: str = "Print the sum of two integers.",
    difficulty: int = 7,
    solutions=(
        (PY3, "a, b = map(int, input().split())\nprint(a + b)\n"),
        (CPP, "int main(){}"),
        (PY2, "a, b = map(int, raw_input().split())\nprint a + b\n"),
    ),
    incorrect=((PY3, "print(0)\n"), (JAVA, "class A {}")),
    n_public: int = 3,
) -> dict:
    return {
        "name": name,
        "description": description,
        "public_tests": {
            "input": [f"{i} {i}\n" for i in range(n_public)],
            "output": [f"{2 * i}\n" for i in range(n_public)],
        },
        "private_tests": {"input": ["5 6\n"], "output": ["11\n"]},
        "generated_tests": {"input": ["7 8\n"] * 3, "output": ["15\n"] * 3},
        "source": 2,
        "difficulty": difficulty,
        "solutions": {"language": [lang for lang, _ in solutions], "solution": [s for _, s in solutions]},
        "incorrect_solutions": {"language": [lang for lang, _ in incorrect], "solution": [s for _, s in incorrect]},
        "cf_contest_id": 1,
        "cf_index": "A",
        "cf_points": 500.0,
        "cf_rating": 800,
        "cf_tags": ["math"],
        "is_description_translated": False,
        "untranslated_description": "",
        "time_limit": {"seconds": 2, "nanos": 0},
        "memory_limit_bytes": 256_000_000,
        "input_file": "",
        "output_file": "",
    }


def codecontests_splits() -> dict[str, list[dict]]:
    return {
        "train": [
            contest_problem("1_A. Sum"),
            contest_problem("2_B. Empty", description="   "),
            contest_problem(
                "3_C. Long", difficulty=9, solutions=((PY3, "x = 1\n" * 3000), (PY3, "print(1)\n"), (PY3, "  \n"))
            ),
        ],
        "valid": [contest_problem("4_A. Valid", difficulty=1, n_public=1)],
        "test": [contest_problem("5_A. Test", difficulty=0, n_public=0)],
    }


def write_codecontests_parquet(root: Path) -> Path:
    """The Hugging Face layout: data/<split>-0000i-of-0000n.parquet (train in two shards)."""
    data = root / "data"
    data.mkdir(parents=True)
    for split, rows in codecontests_splits().items():
        shards = [rows[:2], rows[2:]] if split == "train" else [rows]
        for i, shard in enumerate(shards):
            table = pa.Table.from_pylist(shard, schema=CODECONTESTS_SCHEMA)
            pq.write_table(table, data / f"{split}-{i:05d}-of-{len(shards):05d}.parquet")
    return root


def write_codecontests_arrow(root: Path) -> Path:
    """The `save_to_disk` layout: <split>/data-00000-of-00001.arrow (Arrow IPC stream)."""
    for split, rows in codecontests_splits().items():
        (root / split).mkdir(parents=True)
        table = pa.Table.from_pylist(rows, schema=CODECONTESTS_SCHEMA)
        with pa.OSFile(str(root / split / "data-00000-of-00001.arrow"), "wb") as sink:
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table, max_chunksize=2)
    return root


def write_mbpp_parquet(root: Path) -> Path:
    rows = {
        "train": [
            {
                "task_id": 601,
                "text": "Write a function to add two numbers.",
                "code": "def add(a, b):\r\n    return a + b",
                "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"],
                "test_setup_code": "",
                "challenge_test_list": [],
            }
        ],
        "test": [
            {
                "task_id": 11,
                "text": "Write a python function to remove first and last occurrence of a given character.",
                "code": "def remove_Occ(s, ch):\r\n    return s.replace(ch, '', 1)[::-1].replace(ch, '', 1)[::-1]",
                "test_list": ['assert remove_Occ("hello","l") == "heo"'],
                "test_setup_code": "",
                "challenge_test_list": ['assert remove_Occ("","l") == ""'],
            }
        ],
        "validation": [
            {
                "task_id": 511,
                "text": "Find the minimum.",
                "code": "def m(x):\r\n    return min(x)",
                "test_list": ["assert m([3, 1]) == 1"],
                "test_setup_code": "import math",
                "challenge_test_list": [],
            }
        ],
        "prompt": [
            {
                "task_id": 2,
                "text": "Find shared elements.",
                "code": "def s(a, b):\r\n    return set(a) & set(b)",
                "test_list": ["assert s([1], [1]) == {1}"],
                "test_setup_code": "",
                "challenge_test_list": [],
            }
        ],
    }
    (root / "full").mkdir(parents=True)
    for split, split_rows in rows.items():
        pq.write_table(
            pa.Table.from_pylist(split_rows, schema=MBPP_SCHEMA), root / "full" / f"{split}-00000-of-00001.parquet"
        )
    return root


MBPP_SANITIZED_SCHEMA = pa.schema(
    [
        ("source_file", pa.string()),
        ("task_id", pa.int32()),
        ("prompt", pa.string()),
        ("code", pa.string()),
        ("test_imports", pa.list_(pa.string())),
        ("test_list", pa.list_(pa.string())),
    ]
)


def write_mbpp_sanitized_parquet(root: Path) -> Path:
    """The `sanitized` configuration: `prompt` instead of `text`, `test_imports` instead of `test_setup_code`."""
    rows = [
        {
            "source_file": "Benchmark Questions Verification V2.ipynb",
            "task_id": 82,
            "prompt": "Write a function to find the volume of a sphere.",
            "code": "import math\r\ndef volume_sphere(r):\r\n  return (4/3)*math.pi*r*r*r",
            "test_imports": ["import math"],
            "test_list": [
                "assert math.isclose(volume_sphere(10), 4188.790204786391, rel_tol=0.001)",
                "assert math.isclose(volume_sphere(25), 65449.84694978735, rel_tol=0.001)",
            ],
        },
        {
            "source_file": "Benchmark Questions Verification V2.ipynb",
            "task_id": 2,
            "prompt": "Write a function to find the shared elements from the given two lists.",
            "code": "def similar_elements(a, b):\r\n  return tuple(set(a) & set(b))",
            "test_imports": [],
            "test_list": ["assert set(similar_elements((3, 4), (4, 5))) == set((4,))"],
        },
    ]
    (root / "sanitized").mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist(rows, schema=MBPP_SANITIZED_SCHEMA), root / "sanitized" / "test-00000-of-00001.parquet"
    )
    return root


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def tokenizer_dir(micro_models) -> Path:
    return micro_models["micro-mtp"]


@pytest.mark.parametrize("writer", [write_codecontests_parquet, write_codecontests_arrow])
def test_codecontests_keeps_python_solutions_with_examples(tmp_path, tokenizer_dir, writer):
    raw = writer(tmp_path / "raw")
    report = prepare_codecontests(raw, tmp_path / "out", tokenizer_dir, max_tokens=2048)
    assert set(report.splits) == {"train", "valid", "test"}
    train = read_records(processed_path(tmp_path / "out", "train"))
    assert [r["task_id"] for r in train] == [
        "1_A. Sum_correct_0",
        "1_A. Sum_correct_2",
        "1_A. Sum_incorrect_0",
        "3_C. Long_correct_1",
        "3_C. Long_incorrect_0",
    ]
    first = train[0]
    assert first["instruction"] == "Print the sum of two integers."
    assert first["input"] == "Example 1:\nInput:\n0 0\nOutput:\n0\n\nExample 2:\nInput:\n1 1\nOutput:\n2"
    assert first["output"].startswith("a, b = map(int, input().split())")
    assert first["metadata"] == {"source": "codecontests", "difficulty": 7, "has_tests": True}
    assert [r["is_correct"] for r in train] == [True, True, False, True, False]
    assert read_records(processed_path(tmp_path / "out", "test"))[0]["input"] == ""


def test_codecontests_drop_report_counts_every_reason(tmp_path, tokenizer_dir):
    raw = write_codecontests_parquet(tmp_path / "raw")
    report = prepare_codecontests(raw, tmp_path / "out", tokenizer_dir, max_tokens=2048)
    dropped = report.splits["train"].dropped
    assert dropped == {
        "solution not in Python (language other than 1 = Python 2, 3 = Python 3)": 2
        + 2
        + 1,  # 1_A, 2_B: C++ and Java; 3_C: Java
        "problem has no description": 3,  # 2_B's Python solutions (2 correct + 1 incorrect)
        "over the token budget (> 2048 tokens)": 1,
        "empty solution": 1,
    }
    meta = json.loads((tmp_path / "out" / "processed" / "train_metadata.json").read_text())
    assert meta["preparation"]["dropped"] == dict(sorted(dropped.items()))
    assert meta["preparation"]["kept"] == 5 and meta["n_samples"] == 5
    assert meta["tokens"]["max"] <= 2048


def test_codecontests_splits_are_indexed(tmp_path, tokenizer_dir):
    raw = write_codecontests_parquet(tmp_path / "raw")
    prepare_codecontests(raw, tmp_path / "out", tokenizer_dir)
    for split, n in (("train", 5), ("valid", 3), ("test", 3)):
        index = DatasetIndex.load(processed_path(tmp_path / "out", split))
        assert len(index) == n
        assert (index.n_tokens > 0).all()
    valid = DatasetIndex.load(processed_path(tmp_path / "out", "valid"))
    assert valid.difficulty.tolist() == [1, 1, 1] and valid.is_correct.tolist() == [True, True, False]


def test_codecontests_missing_column_is_named(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    table = pa.Table.from_pylist([contest_problem("x")], schema=CODECONTESTS_SCHEMA).drop_columns(["solutions"])
    pq.write_table(table, raw / "train-00000-of-00001.parquet")
    with pytest.raises(
        DataError,
        match=r"train-00000-of-00001\.parquet: missing column\(s\) \['solutions'\]; "
        r"expected the Hugging Face CodeContests schema",
    ):
        prepare_codecontests(raw, tmp_path / "out")
    assert not (tmp_path / "out" / "processed" / "train.jsonl").exists()


def test_codecontests_bad_row_is_named_and_nothing_half_written(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    bad = contest_problem("y")
    bad["solutions"] = {"language": [PY3, PY3], "solution": ["print(1)"]}
    pq.write_table(pa.Table.from_pylist([contest_problem("x"), bad], schema=CODECONTESTS_SCHEMA), raw / "train.parquet")
    with pytest.raises(DataError, match=r"train\.parquet: row 1: 'solutions' has 2 languages for 1 solutions"):
        prepare_codecontests(raw, tmp_path / "out", None)
    assert list((tmp_path / "out" / "processed").iterdir()) == []


def test_raw_file_of_unknown_split_and_missing_path(tmp_path):
    (tmp_path / "raw").mkdir()
    pq.write_table(
        pa.Table.from_pylist([contest_problem("x")], schema=CODECONTESTS_SCHEMA), tmp_path / "raw" / "shard0.parquet"
    )
    with pytest.raises(DataError, match=r"shard0\.parquet: cannot tell its split"):
        prepare_codecontests(tmp_path / "raw", tmp_path / "out")
    with pytest.raises(DataError, match=r"nowhere: raw dataset not found"):
        prepare_codecontests(tmp_path / "nowhere", tmp_path / "out")


def test_mbpp_splits_tests_and_unix_newlines(tmp_path):
    raw = write_mbpp_parquet(tmp_path / "raw")
    report = prepare_mbpp(raw, tmp_path / "out")
    assert set(report.splits) == {"train", "test", "valid", "prompt"}
    (record,) = read_records(processed_path(tmp_path / "out", "test"))
    assert record["task_id"] == "MBPP/11" and record["is_correct"] is True
    assert "\r" not in record["output"] and record["output"].startswith("def remove_Occ(s, ch):\n")
    assert record["input"] == 'assert remove_Occ("hello","l") == "heo"'
    assert record["metadata"]["test_list"] == ['assert remove_Occ("hello","l") == "heo"']
    assert record["metadata"]["challenge_test_list"] == ['assert remove_Occ("","l") == ""']
    assert read_records(processed_path(tmp_path / "out", "valid"))[0]["metadata"]["test_setup_code"] == "import math"
    program = record["output"] + "\n" + "\n".join(record["metadata"]["test_list"])
    exec(compile(program, "mbpp", "exec"), {})  # the kept code passes its kept tests


def test_mbpp_sanitized_keeps_the_test_imports(tmp_path):
    raw = write_mbpp_sanitized_parquet(tmp_path / "raw")
    prepare_mbpp(raw, tmp_path / "out")
    sphere, shared = read_records(processed_path(tmp_path / "out", "test"))
    assert (
        sphere["task_id"] == "MBPP/82" and sphere["instruction"] == "Write a function to find the volume of a sphere."
    )
    assert sphere["metadata"]["test_setup_code"] == "import math" and shared["metadata"]["test_setup_code"] == ""
    for record in (sphere, shared):  # set-up code, then the kept code, then the kept tests: as evaluation runs them
        metadata = record["metadata"]
        exec(
            compile("\n".join([metadata["test_setup_code"], record["output"], *metadata["test_list"]]), "mbpp", "exec"),
            {},
        )
    with pytest.raises(NameError, match="math"):  # the tests themselves need the import
        exec("\n".join(sphere["metadata"]["test_list"]), {"volume_sphere": lambda r: 0.0})


def test_mbpp_without_description_is_named(tmp_path):
    (tmp_path / "raw").mkdir()
    schema = pa.schema([f for f in MBPP_SCHEMA if f.name != "text"])
    pq.write_table(
        pa.Table.from_pylist(
            [{"task_id": 1, "code": "x", "test_list": [], "test_setup_code": "", "challenge_test_list": []}],
            schema=schema,
        ),
        tmp_path / "raw" / "test.parquet",
    )
    with pytest.raises(DataError, match=r"test\.parquet: row 0: no 'text' \(or 'prompt'\) description"):
        prepare_mbpp(tmp_path / "raw", tmp_path / "out")


def test_humaneval_is_the_real_164_problems_with_their_tests(tmp_path, tokenizer_dir):
    report = prepare_humaneval(tmp_path / "out", tokenizer_dir)
    records = read_records(processed_path(tmp_path / "out", "test"))
    assert report.splits["test"].kept == len(records) == 164
    assert records[0]["task_id"] == "HumanEval/0" and records[-1]["task_id"] == "HumanEval/163"
    first = records[0]
    assert first["instruction"] == first["metadata"]["prompt"] and "def has_close_elements" in first["instruction"]
    assert (
        first["metadata"]["entry_point"] == "has_close_elements" and "def check(candidate)" in first["metadata"]["test"]
    )
    namespace: dict = {}
    exec(first["instruction"] + first["output"] + "\n" + first["metadata"]["test"], namespace)
    namespace["check"](namespace["has_close_elements"])
    assert len(DatasetIndex.load(processed_path(tmp_path / "out", "test"))) == 164


def test_humaneval_bad_raw_line_is_named(tmp_path):
    raw = tmp_path / "he.jsonl"
    raw.write_text(
        json.dumps({"task_id": "X/0", "prompt": "p", "canonical_solution": "c", "test": "t", "entry_point": "e"})
        + "\n"
        + '{"task_id": "X/1"}\n'
    )
    with pytest.raises(DataError, match=r"he\.jsonl:2: missing or non-string \['prompt'"):
        prepare_humaneval(tmp_path / "out", raw=raw)


def test_max_tokens_below_two_is_rejected(tmp_path, tokenizer_dir):
    with pytest.raises(DataError, match="--max-tokens: 1; expected ≥ 2"):
        prepare_humaneval(tmp_path / "out", tokenizer_dir, max_tokens=1)


@pytest.mark.parametrize("content", [b"bogus\n", b""], ids=["corrupt", "empty"])
@pytest.mark.parametrize(
    "prepare,write,folder",
    [(prepare_codecontests, write_codecontests_parquet, "data"), (prepare_mbpp, write_mbpp_parquet, "full")],
    ids=["codecontests", "mbpp"],
)
def test_unreadable_raw_parquet_is_named_and_nothing_written(tmp_path, prepare, write, folder, content):
    raw = write(tmp_path / "raw") / folder
    (raw / "validation-00000-of-00001.parquet").unlink(missing_ok=True)
    (raw / "valid-00000-of-00001.parquet").write_bytes(content)  # the last split: the others would be written first
    with pytest.raises(DataError, match=r"valid-00000-of-00001\.parquet: unreadable parquet file \(.+\)$"):
        prepare(raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_sandbox_that_cannot_run_the_tests_stops_the_smoke_set(monkeypatch):
    import wmtp.data.prepare as prepare_module
    from wmtp.data.prepare import program_passes
    from wmtp.sandbox import ExecutionResult

    broken = ExecutionResult(status="error", reason="cannot set the memory limit")
    monkeypatch.setattr(prepare_module, "run_program", lambda source, timeout_s: broken)
    with pytest.raises(DataError) as error:
        program_passes("assert True", 1.0)
    assert str(error.value) == (
        "smoke: the sandbox could not run a test program (cannot set the memory limit); labels cannot be verified"
    )
