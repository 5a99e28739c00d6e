"""The whole standard library of the running Python through `prepare_pycode`: every record parses back to
its definition, no file is in two splits, and the splits validate (about a minute on 2 cores)."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.unit.test_data_pycode import assert_reconstructs, by_task, defs_of
from wmtp.data.pycode import SPLITS, default_src, prepare_pycode, select_files, split_of
from wmtp.data.validate import validate_dir


@pytest.mark.slow
def test_the_whole_stdlib(tmp_path):
    out = tmp_path / "pycode"
    report = prepare_pycode(out)
    records = by_task(out)
    kept = {split: report.splits[split].kept for split in SPLITS}
    assert sum(kept.values()) == len(records) > 10_000  # CPython 3.11: 14019 / 441 / 1047
    assert kept["train"] > 0.8 * len(records) and kept["valid"] > 100 and kept["test"] > 100
    nodes = {}
    for rel, path in select_files(default_src()).files:
        try:
            nodes.update(defs_of(path, rel))
        except (SyntaxError, UnicodeDecodeError):
            continue
    splits_of_file = {}
    for task_id, record in records.items():
        assert_reconstructs(record, nodes[task_id])
        splits_of_file.setdefault(record["metadata"]["file"], set()).add(split_of(record["metadata"]["file"]))
    assert all(len(splits) == 1 for splits in splits_of_file.values())
    assert Counter(r["metadata"]["difficulty"] for r in records.values()).keys() == set(range(1, 12))
    assert all(check.ok for check in validate_dir(out))
    assert prepare_pycode(out).reused
