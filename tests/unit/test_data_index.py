"""The compact index: layout, metadata, staleness, and one clear message per bad line."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from wmtp.data.index import INDEX_DTYPE, DatasetIndex, build_index, index_path, metadata_path
from wmtp.data.schema import DataError


def alpaca(i: int, correct: bool = True, difficulty: int = 1, output: str | None = None) -> dict:
    return {
        "instruction": f"Write function number {i}.",
        "input": "" if i % 3 else f"example {i}",
        "output": output if output is not None else f"def f{i}(x):\n    return x + {i}\n",
        "task_id": f"task{i}_{'correct' if correct else 'incorrect'}_0",
        "is_correct": correct,
        "metadata": {"source": "unit", "difficulty": difficulty, "has_tests": bool(i % 2)},
    }


def write_jsonl(path: Path, records: list, raw_lines: dict[int, str] | None = None) -> Path:
    """Records as JSONL; `raw_lines` replaces line i (1-based) by the given text verbatim.

    A lone surrogate `\\udcXX` in a raw line is written as the byte 0xXX (to make non-UTF-8 lines).
    """
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    for number, text in (raw_lines or {}).items():
        lines[number - 1] = text
    path.write_bytes("".join(line + "\n" for line in lines).encode("utf-8", "surrogateescape"))
    return path


@pytest.fixture
def mixed_file(tmp_path) -> Path:
    records = [alpaca(i, correct=i % 3 != 0, difficulty=i % 12, output="ü" * i) for i in range(50)]
    return write_jsonl(tmp_path / "train.jsonl", records)


def test_index_rows_point_at_every_line(mixed_file):
    index = build_index(mixed_file)
    data = mixed_file.read_bytes()
    lines = data.splitlines(keepends=True)
    assert len(index) == len(lines) == 50
    for row, line in enumerate(lines):
        start, length = int(index.offsets[row]), int(index.lengths[row])
        assert data[start : start + length] == line
        record = json.loads(line)
        assert bool(index.is_correct[row]) == record["is_correct"]
        assert int(index.difficulty[row]) == record["metadata"]["difficulty"]
    assert index.n_tokens.sum() == 0  # no tokenizer given


def test_index_is_16_bytes_per_sample_on_disk_and_in_memory(mixed_file):
    build_index(mixed_file)
    loaded = DatasetIndex.load(mixed_file)
    assert INDEX_DTYPE.itemsize == 16
    assert loaded.nbytes == 16 * len(loaded)
    header_bytes = 256  # the .npy header (a multiple of 64 bytes)
    assert index_path(mixed_file).stat().st_size <= 16 * len(loaded) + header_bytes


def test_metadata_counts_histogram_and_sha256(mixed_file):
    build_index(mixed_file)
    meta = json.loads(metadata_path(mixed_file).read_text())
    records = [json.loads(line) for line in mixed_file.read_text(encoding="utf-8").splitlines()]
    n_correct = sum(r["is_correct"] for r in records)
    assert (meta["n_samples"], meta["n_correct"], meta["n_incorrect"]) == (50, n_correct, 50 - n_correct)
    expected_hist = {}
    for r in records:
        key = str(r["metadata"]["difficulty"])
        expected_hist[key] = expected_hist.get(key, 0) + 1
    assert meta["difficulty_histogram"] == expected_hist
    assert meta["jsonl_sha256"] == hashlib.sha256(mixed_file.read_bytes()).hexdigest()
    assert meta["sources"] == {"unit": 50}
    assert metadata_path(mixed_file).name == "train_metadata.json"


def test_token_counts_match_the_collator(mixed_file, micro_models):
    from wmtp.data.collate import MTPCollator
    from wmtp.model import load_tokenizer

    tokenizer = load_tokenizer(micro_models["micro-mtp"])
    index = build_index(mixed_file, tokenizer)
    records = [json.loads(line) for line in mixed_file.read_text(encoding="utf-8").splitlines()]
    collator = MTPCollator(tokenizer, n_future_tokens=2, max_length=4096)
    lengths = collator(records)["attention_mask"].sum(dim=1).numpy()
    np.testing.assert_array_equal(index.n_tokens, lengths)
    assert index.metadata["tokens"]["max"] == int(lengths.max())


def test_missing_index_names_the_file_and_the_command(mixed_file):
    with pytest.raises(DataError, match=r"train\.jsonl: no index .*wmtp data index .*train\.jsonl"):
        DatasetIndex.load(mixed_file)


def test_changed_file_makes_the_index_stale(mixed_file):
    build_index(mixed_file)
    with open(mixed_file, "ab") as handle:
        handle.write((json.dumps(alpaca(99)) + "\n").encode())
    with pytest.raises(DataError, match="index is stale.*wmtp data index"):
        DatasetIndex.load(mixed_file)


def test_same_size_edit_is_also_stale(mixed_file):
    build_index(mixed_file)
    data = bytearray(mixed_file.read_bytes())
    data[data.index(b"true")] = ord("T")  # one byte changed, size unchanged
    mixed_file.write_bytes(bytes(data))
    with pytest.raises(DataError, match="stale"):
        DatasetIndex.load(mixed_file)


def test_missing_jsonl_is_named(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found"):
        DatasetIndex.load(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found"):
        build_index(tmp_path / "nope.jsonl")


def with_metadata(**metadata) -> str:
    """Line 3 of the bad-line tests with `metadata` keys replaced (a value of ... removes the key)."""
    base = {"source": "unit", "difficulty": 1, "has_tests": True}
    merged = {k: v for k, v in {**base, **metadata}.items() if v is not ...}
    return json.dumps({**alpaca(3), "metadata": merged})


def without(key: str) -> str:
    return json.dumps({k: v for k, v in alpaca(3).items() if k != key})


# (line 3 of a file, a regex for the whole message after "<file>:3: "); exact text except exception details
BAD_LINES = [
    ('{"instruction": "x", "input": ', r"not valid JSON \(.+\); line truncated or malformed"),
    ("", re.escape("empty line (expected one JSON object per line)")),
    ("\udcff" + json.dumps(alpaca(3))[1:], r"not UTF-8 \('utf-8' codec can't decode byte 0xff in position 0: .+\)"),
    ("[1, 2]", re.escape("expected a JSON object, got array")),
    (without("output"), re.escape("missing key 'output' (expected a string)")),
    (json.dumps({**alpaca(3), "task_id": 7}), re.escape("'task_id' must be a string, got integer")),
    (without("is_correct"), re.escape("missing key 'is_correct' (expected true or false)")),
    (json.dumps({**alpaca(3), "is_correct": "yes"}), re.escape("'is_correct' must be true or false, got string")),
    (without("metadata"), re.escape("missing key 'metadata' (expected an object {source, difficulty, has_tests})")),
    (
        json.dumps({**alpaca(3), "metadata": "unit"}),
        re.escape("'metadata' must be an object {source, difficulty, has_tests}, got string"),
    ),
    (with_metadata(source=...), re.escape("missing key 'metadata.source' (expected a string)")),
    (with_metadata(source=3), re.escape("'metadata.source' must be a string, got integer")),
    (with_metadata(difficulty=...), re.escape("missing key 'metadata.difficulty' (expected an integer 0..127)")),
    (with_metadata(difficulty="3"), re.escape("'metadata.difficulty' must be an integer 0..127, got string")),
    (with_metadata(difficulty=True), re.escape("'metadata.difficulty' must be an integer 0..127, got boolean")),
    (with_metadata(difficulty=300), re.escape("'metadata.difficulty' is 300; expected 0..127 (0 = unknown)")),
    (with_metadata(has_tests=...), re.escape("missing key 'metadata.has_tests' (expected true or false)")),
    (with_metadata(has_tests=1), re.escape("'metadata.has_tests' must be true or false, got integer")),
]
BAD_LINE_IDS = [
    "json",
    "empty",
    "utf8",
    "array",
    "no-output",
    "task_id-int",
    "no-is_correct",
    "is_correct-str",
    "no-metadata",
    "metadata-str",
    "no-source",
    "source-int",
    "no-difficulty",
    "difficulty-str",
    "difficulty-bool",
    "difficulty-300",
    "no-has_tests",
    "has_tests-int",
]


@pytest.mark.parametrize("line,message", BAD_LINES, ids=BAD_LINE_IDS)
def test_bad_line_is_reported_with_file_and_line_and_nothing_is_written(tmp_path, line, message):
    path = write_jsonl(tmp_path / "train.jsonl", [alpaca(i) for i in range(5)], {3: line})
    with pytest.raises(DataError) as error:
        build_index(path)
    assert re.fullmatch(re.escape(f"{path}:3: ") + message, str(error.value)), str(error.value)
    assert not index_path(path).exists() and not metadata_path(path).exists()
    assert [p.name for p in tmp_path.iterdir()] == ["train.jsonl"]  # no temp file left behind


def test_truncated_last_line_is_reported_not_skipped(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [alpaca(i) for i in range(4)])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])  # cut in the middle of line 4
    with pytest.raises(DataError, match=r"train\.jsonl:4: not valid JSON"):
        build_index(path)


def test_complete_last_line_without_newline_is_indexed(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [alpaca(i) for i in range(3)])
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    index = build_index(path)
    assert len(index) == 3
    assert int(index.offsets[2] + index.lengths[2]) == path.stat().st_size


def test_corrupt_index_file_is_named(mixed_file):
    build_index(mixed_file)
    index_path(mixed_file).write_bytes(b"not numpy")
    with pytest.raises(DataError, match=r"train\.index\.npy: unreadable index"):
        DatasetIndex.load(mixed_file)


def test_index_row_count_must_match_its_metadata(mixed_file):
    build_index(mixed_file)
    meta = json.loads(metadata_path(mixed_file).read_text())
    metadata_path(mixed_file).write_text(json.dumps({**meta, "n_samples": 49}))
    with pytest.raises(DataError) as error:
        DatasetIndex.load(mixed_file)
    assert str(error.value) == (
        f"{index_path(mixed_file)}: 50 rows but the metadata says 49; run `wmtp data index {mixed_file}`"
    )


def write_metadata_text(path, text: str) -> None:
    metadata_path(path).write_text(text)


def edit_metadata(path, **changes) -> None:
    meta = json.loads(metadata_path(path).read_text())
    metadata_path(path).write_text(json.dumps({**meta, **changes}))


# (how to break t.jsonl's index, the whole message: {index} and {meta} are the files, {hint} the fix)
BROKEN_INDEXES = [
    (lambda p: write_metadata_text(p, "{"), r"{meta}: not valid JSON \(.+\); {hint}"),
    (lambda p: write_metadata_text(p, "[1]"), r"{meta}: expected a JSON object, got array; {hint}"),
    (
        lambda p: edit_metadata(p, index_format="wmtp-index-v0"),
        r"{meta}: index_format is 'wmtp-index-v0'; expected 'wmtp-index-v1'; {hint}",
    ),
    (
        lambda p: np.save(index_path(p), np.zeros(5)),
        r"{index}: unexpected index layout float64 \(5,\) "
        r"\(expected a 1-D array of 16-byte wmtp-index-v1 records\); {hint}",
    ),
    (lambda p: index_path(p).write_bytes(b"not numpy"), r"{index}: unreadable index \(.+\); {hint}"),
]
BROKEN_INDEX_IDS = ["metadata-json", "metadata-array", "index_format", "layout", "unreadable"]


def broken_index_message(path, pattern: str) -> str:
    return pattern.format(
        index=re.escape(str(index_path(path))),
        meta=re.escape(str(metadata_path(path))),
        hint=re.escape(f"run `wmtp data index {path}`"),
    )


@pytest.mark.parametrize("breaks,pattern", BROKEN_INDEXES, ids=BROKEN_INDEX_IDS)
def test_broken_index_or_metadata_is_refused_when_loading(mixed_file, breaks, pattern):
    build_index(mixed_file)
    breaks(mixed_file)
    with pytest.raises(DataError) as error:
        DatasetIndex.load(mixed_file)
    assert re.fullmatch(broken_index_message(mixed_file, pattern), str(error.value)), str(error.value)
