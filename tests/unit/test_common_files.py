"""Atomic writes and directories published by a rename (wmtp/common/files.py)."""

from __future__ import annotations

import os
import stat

import pytest

from wmtp.common.files import atomic_dir, atomic_output, write_text_atomic


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_a_written_file_has_a_new_files_permissions_and_no_temp_is_left(tmp_path, umask_022):
    path = tmp_path / "sub" / "summary.json"
    write_text_atomic(path, "é\n")
    assert path.read_bytes() == "é\n".encode() and stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(path.parent) == ["summary.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_output(path, "w") as handle:
        handle.write("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["metrics.jsonl"]


def test_a_dir_appears_whole_or_not_at_all_and_replace_swaps_an_existing_one(tmp_path):
    dest = tmp_path / "best"
    with pytest.raises(RuntimeError), atomic_dir(dest) as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("disk full")
    assert os.listdir(tmp_path) == []
    with atomic_dir(dest) as tmp:
        (tmp / "weights").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(dest, replace=True) as tmp:
        (tmp / "weights").write_text("2")
        raise RuntimeError("disk full")
    assert (dest / "weights").read_text() == "1"
    with atomic_dir(dest, replace=True) as tmp:
        (tmp / "weights").write_text("3")
    assert (dest / "weights").read_text() == "3" and os.listdir(tmp_path) == ["best"]
