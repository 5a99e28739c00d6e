"""The smoke dataset end to end: real HumanEval, labels true by execution, indexed, sampled, batched."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader

from wmtp.data.collate import IGNORE_INDEX, MTPCollator
from wmtp.data.dataset import JsonlSamples
from wmtp.data.humaneval import read_humaneval
from wmtp.data.index import DatasetIndex
from wmtp.data.mutation import candidate_mutants, constant_mutant, token_mutants
from wmtp.data.prepare import humaneval_program, length_difficulties, prepare_smoke
from wmtp.data.sampler import ShardedSampler
from wmtp.data.sampling import SamplingSpec, draw_indices
from wmtp.data.validate import validate_dir

LIMIT = 16  # HumanEval/0..15: problems 7 and 15 land in valid


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, micro_models) -> Path:
    out = tmp_path_factory.mktemp("smoke")
    prepare_smoke(out, micro_models["micro-mtp"], max_tokens=512, limit=LIMIT, incorrect_per_problem=2)
    return out / "processed"


def run_in_subprocess(source: str, timeout_s: float) -> bool:
    """An execution independent of the sandbox: a fresh interpreter in a temp dir, its own process
    group, killed at the timeout; True if it exited 0."""
    with tempfile.TemporaryDirectory(prefix="wmtp-smoke-") as workdir:
        process = subprocess.Popen(
            [sys.executable, "-I", "-c", source],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            return process.wait(timeout=timeout_s) == 0
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return False


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_token_mutants_change_exactly_one_token():
    source = "    if a < b and n == 0:\n        return a + 1  # keep this comment\n    return True\n"
    mutants = token_mutants(source)
    assert [m.description for m in mutants] == [
        "line 1: '<' -> '<='",
        "line 1: 'and' -> 'or'",
        "line 1: '==' -> '!='",
        "line 1: '0' -> '1'",
        "line 2: '+' -> '-'",
        "line 2: '1' -> '2'",
        "line 3: 'True' -> 'False'",
    ]
    assert mutants[4].source == source.replace("a + 1", "a - 1")  # comment and layout untouched
    assert constant_mutant(source).source == "    return None\n"
    assert len(candidate_mutants(source)) == len(mutants) + 1


def test_difficulty_bins_cover_1_to_11_by_length():
    problems = read_humaneval()
    difficulties = length_difficulties(problems)
    assert sorted(set(difficulties)) == list(range(1, 12))
    lengths = [len(p["canonical_solution"]) for p in problems]
    shortest, longest = int(np.argmin(lengths)), int(np.argmax(lengths))
    assert difficulties[shortest] == 1 and difficulties[longest] == 11


@pytest.mark.slow
def test_smoke_splits_have_both_labels_within_budget(smoke):
    train, valid = records(smoke / "train.jsonl"), records(smoke / "valid.jsonl")
    assert {r["task_id"].split("_")[0] for r in valid} <= {"HumanEval/7", "HumanEval/15"}
    for split in (train, valid):
        assert any(r["is_correct"] for r in split) and any(not r["is_correct"] for r in split)
    index = DatasetIndex.load(smoke / "train.jsonl")
    assert index.n_tokens.max() <= 512 and (index.n_tokens > 0).all()
    assert set(index.difficulty.tolist()) <= set(range(1, 12))
    assert all(r["metadata"]["source"] == "humaneval-smoke" for r in train)
    assert all(c.ok for c in validate_dir(smoke))


@pytest.mark.slow
def test_smoke_labels_are_true_when_executed(smoke):
    """Re-run every sample outside the sandbox that labelled it: correct ones pass, incorrect ones fail."""
    problems = {p["task_id"]: p for p in read_humaneval(limit=LIMIT)}
    for record in records(smoke / "train.jsonl") + records(smoke / "valid.jsonl"):
        problem = problems[record["task_id"].rsplit("_", 2)[0]]
        assert record["instruction"] == problem["prompt"]
        if not record["is_correct"]:
            assert record["output"] != problem["canonical_solution"] and record["metadata"]["mutation"]
        passed = run_in_subprocess(humaneval_program(problem, record["output"]), timeout_s=5.0)
        assert passed == record["is_correct"], record["task_id"]


@pytest.mark.slow
def test_smoke_feeds_sharded_batches(smoke, micro_models):
    from wmtp.model import load_tokenizer

    tokenizer = load_tokenizer(micro_models["micro-mtp"])
    train = smoke / "train.jsonl"
    index = DatasetIndex.load(train)
    rows = draw_indices(index, SamplingSpec(strategy="balanced", correct_ratio=0.5), seed=0)
    assert index.is_correct[rows].mean() == 0.5
    seen = []
    for rank in range(2):
        sampler = ShardedSampler(len(rows), rank, 2, seed=0, drop_last=True)
        loader = DataLoader(
            JsonlSamples(train, rows),
            batch_size=4,
            sampler=sampler,
            collate_fn=MTPCollator(tokenizer, n_future_tokens=4, max_length=512),
        )
        for batch in loader:
            labelled = batch["labels"] != IGNORE_INDEX
            assert labelled.any(dim=(1, 2)).all()
            seen.extend(batch["task_ids"])
    assert len(seen) == len(set(seen)) == len(rows) - len(rows) % 2
