"""JsonlSamples: reads only the chosen lines; a bad line names file:line; works in DataLoader workers."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from torch.utils.data import DataLoader

from tests.unit.test_data_index import alpaca, write_jsonl
from wmtp.data.dataset import JsonlSamples
from wmtp.data.index import build_index
from wmtp.data.schema import DataError


@pytest.fixture
def indexed(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [alpaca(i, correct=i % 2 == 0, output="é" * i) for i in range(40)])
    build_index(path)
    return path


def test_chosen_rows_are_the_parsed_lines(indexed):
    lines = indexed.read_text(encoding="utf-8").splitlines()
    rows = np.array([39, 0, 17, 17, 5])
    dataset = JsonlSamples(indexed, rows)
    assert len(dataset) == 5
    for i, row in enumerate(rows):
        assert dataset[i] == json.loads(lines[row])


def test_a_plain_map_style_class_that_needs_no_torch(indexed):
    from torch.utils.data import Dataset

    assert not isinstance(JsonlSamples(indexed, np.arange(3)), Dataset)
    code = (
        f"import sys; from wmtp.data.dataset import JsonlSamples; JsonlSamples({str(indexed)!r}, [0])[0]; "
        "print('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_dataloader_workers_each_read_their_own_handle(indexed):
    rows = np.arange(40)[::-1].copy()
    loader = DataLoader(JsonlSamples(indexed, rows), batch_size=8, num_workers=2, collate_fn=list)
    task_ids = [r["task_id"] for batch in loader for r in batch]
    assert task_ids == [alpaca(i, correct=i % 2 == 0)["task_id"] for i in rows]


@pytest.mark.parametrize(
    "rows,message",
    [
        ([0, 40], "row 40 is out of range; the file has 40 rows"),
        ([-1, 3], "row -1 is out of range; the file has 40 rows"),
        ([[0, 1], [2, 3]], "rows must be a 1-D array of row numbers, got shape (2, 2)"),
    ],
)
def test_bad_rows_are_rejected(indexed, rows, message):
    with pytest.raises(DataError) as error:
        JsonlSamples(indexed, np.array(rows))
    assert str(error.value) == f"{indexed}: {message}"


def test_file_cut_short_after_indexing_names_file_and_line(indexed):
    index = build_index(indexed)
    data = indexed.read_bytes()
    indexed.write_bytes(data[: int(index.offsets[39]) + 10])  # line 40 loses its end
    dataset = JsonlSamples(indexed, np.array([0, 39]), index=index)
    assert dataset[0]["task_id"] == alpaca(0)["task_id"]
    with pytest.raises(DataError) as error:
        dataset[1]
    assert str(error.value) == (
        f"{indexed}:40: line is cut short (file truncated after indexing?); run `wmtp data index {indexed}`"
    )


def test_line_broken_after_indexing_names_file_and_line(indexed):
    index = build_index(indexed)
    data = bytearray(indexed.read_bytes())
    start = int(index.offsets[7])
    data[start : start + 12] = b"{broken json"  # same length: only reading the line can notice
    indexed.write_bytes(bytes(data))
    dataset = JsonlSamples(indexed, np.array([3, 7]), index=index)
    assert dataset[0]["task_id"] == alpaca(3, correct=False)["task_id"]
    with pytest.raises(DataError, match=r"train\.jsonl:8: not valid JSON"):
        dataset[1]


def test_stale_index_is_refused_when_loading(indexed):
    with open(indexed, "a") as handle:
        handle.write(json.dumps(alpaca(100)) + "\n")
    with pytest.raises(DataError, match="stale"):
        JsonlSamples(indexed, np.array([0]))
