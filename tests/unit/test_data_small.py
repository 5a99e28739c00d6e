"""Small splits (`wmtp data small`, `data.split_variant: small`): sizes, the balanced / curriculum-aware
draw, what each sampling strategy then finds, and the files (byte-exact lines, indexed like any split)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from wmtp.data.index import DatasetIndex, build_index
from wmtp.data.sampling import SamplingSpec, draw_indices
from wmtp.data.schema import DataError
from wmtp.data.small import draw_small, small_path, write_small_split, write_small_splits
from wmtp.data.validate import validate_file

BINS = {"low": (1, 3), "medium": (4, 7), "high": (8, 11)}  # the default curriculum's (unknown: 0 aside)


def row(i: int, correct: bool, difficulty: int) -> dict:
    return {
        "instruction": f"task {i}",
        "input": "",
        "output": f"return {i}",
        "task_id": f"t{i}_{correct}",
        "is_correct": correct,
        "metadata": {"source": "synthetic", "difficulty": difficulty, "has_tests": True},
    }


def write_split(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_index(path)
    return path


def mixed_rows(n: int, correct_every: int = 3, seed: int = 0) -> list[dict]:
    """Difficulties 0..15 (0 and 12+ are in no curriculum bin), one row in `correct_every` correct."""
    rng = np.random.default_rng(seed)
    return [row(i, i % correct_every == 0, int(rng.integers(0, 16))) for i in range(n)]


def bin_of(difficulty: int) -> str:
    return next((name for name, (lo, hi) in BINS.items() if lo <= difficulty <= hi), "none")


def test_sizes_are_capped_at_100_and_32_and_a_smaller_split_is_taken_whole(tmp_path):
    write_split(tmp_path / "train.jsonl", mixed_rows(600))
    write_split(tmp_path / "valid.jsonl", mixed_rows(20, seed=1))
    written = write_small_splits(tmp_path)
    assert len(written["train"]) == 100 and written["train"].jsonl_path == tmp_path / "train_small.jsonl"
    assert len(written["valid"]) == 20 and written["valid"].jsonl_path == tmp_path / "valid_small.jsonl"


def test_half_correct_and_each_half_over_the_curriculum_bins_in_their_shares(tmp_path):
    index = DatasetIndex.load(write_split(tmp_path / "train.jsonl", mixed_rows(600)))
    rows = draw_small(index, 100)
    assert len(set(rows.tolist())) == 100 and list(rows) == sorted(rows)  # distinct, in file order
    correct = index.is_correct[rows]
    assert correct.sum() == 50
    # The default schedule's average shares are low 0.36, medium 0.48, high 0.16: 18 / 24 / 8 of each half.
    for label in (True, False):
        bins = Counter(bin_of(int(d)) for d in index.difficulty[rows][correct == label])
        assert bins == {"low": 18, "medium": 24, "high": 8}, bins


def test_every_strategy_uses_the_small_split_whole(tmp_path):
    write_split(tmp_path / "train.jsonl", mixed_rows(600))
    small = write_small_split(tmp_path / "train.jsonl", 100)

    def drawn(strategy):
        return len(draw_indices(small, SamplingSpec(strategy=strategy), seed=3))

    assert drawn("balanced") == 100  # the critic: exactly half correct
    assert drawn("curriculum") == 100  # verifiable: every bin demand fits
    assert drawn("correct_only") == 50  # baseline, rho1


def test_a_short_label_or_bin_leaves_its_place_to_the_others(tmp_path):
    scarce = [row(i, i < 10, 1 + i % 11) for i in range(300)]  # 10 correct rows only
    index = DatasetIndex.load(write_split(tmp_path / "a" / "train.jsonl", scarce))
    rows = draw_small(index, 100)
    assert len(rows) == 100 and index.is_correct[rows].sum() == 10
    flat = [row(i, i % 2 == 0, 0) for i in range(300)]  # no difficulties (MBPP-like): all in no bin
    index = DatasetIndex.load(write_split(tmp_path / "b" / "train.jsonl", flat))
    rows = draw_small(index, 100)
    assert len(rows) == 100 and index.is_correct[rows].sum() == 50


def test_the_draw_is_seeded(tmp_path):
    index = DatasetIndex.load(write_split(tmp_path / "train.jsonl", mixed_rows(600)))
    assert np.array_equal(draw_small(index, 100, seed=0), draw_small(index, 100, seed=0))
    assert not np.array_equal(draw_small(index, 100, seed=0), draw_small(index, 100, seed=1))


def test_the_file_holds_the_full_splits_lines_byte_for_byte_and_is_indexed(tmp_path):
    full = write_split(tmp_path / "train.jsonl", mixed_rows(300))
    (tmp_path / "train.jsonl").write_bytes(full.read_bytes().rstrip(b"\n"))  # a last line without newline
    build_index(full)
    small = write_small_split(full, 100, seed=2)
    assert small.jsonl_path == small_path(full)
    lines = full.read_bytes().split(b"\n")
    expected = [lines[i].rstrip(b"\n") + b"\n" for i in draw_small(DatasetIndex.load(full), 100, seed=2)]
    assert small_path(full).read_bytes() == b"".join(expected)
    assert DatasetIndex.load(small_path(full)).metadata["small"]["of"] == "train.jsonl"
    assert validate_file(small_path(full)).ok


def test_a_folder_without_train_jsonl_is_refused(tmp_path):
    with pytest.raises(DataError, match="no train.jsonl"):
        write_small_splits(tmp_path)


def test_cli_writes_both_and_says_what(tmp_path, monkeypatch):
    from wmtp_cli.main import app

    write_split(tmp_path / "processed" / "train.jsonl", mixed_rows(600))
    write_split(tmp_path / "processed" / "valid.jsonl", mixed_rows(100, seed=1))
    result = CliRunner().invoke(app, ["data", "small", str(tmp_path)])  # a prepare --out folder: its processed/
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith(
        f"wrote {tmp_path}/processed/train_small.jsonl: 100 of train.jsonl's rows "
        "(50 correct, 50 incorrect; difficulties "
    )
    assert lines[1].startswith(f"wrote {tmp_path}/processed/valid_small.jsonl: 32 of valid.jsonl's rows")
    bad = CliRunner().invoke(app, ["data", "small", str(tmp_path / "nope")])
    assert bad.exit_code == 2 and bad.output.startswith("error: ") and "no train.jsonl" in bad.output


def test_a_spec_picks_the_small_splits_beside_the_named_files():
    from wmtp.train.config import load_experiment
    from wmtp.train.runner import input_paths

    spec = load_experiment("smoke", ["data.split_variant=small"]).stages[0]
    assert spec.data.train == "storage/datasets_v2/smoke/processed/train.jsonl"  # as written
    assert spec.data.train_file == "storage/datasets_v2/smoke/processed/train_small.jsonl"
    assert spec.data.valid_file == "storage/datasets_v2/smoke/processed/valid_small.jsonl"
    paths = {key: (path, hint) for key, path, hint in input_paths(spec)}
    assert paths["data.train"][0].endswith("train_small.jsonl") and "wmtp data small" in paths["data.train"][1]
    full = load_experiment("smoke").stages[0]
    assert full.data.split_variant == "full" and full.data.train_file == full.data.train
