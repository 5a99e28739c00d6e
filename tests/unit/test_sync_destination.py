"""`--dest` parsing and PATHS resolution of `wmtp sync-storage`: good forms parse, bad ones are one line."""

from pathlib import Path

import pytest

from wmtp_storage_sync.destination import LocalLocation, S3Location, VesslLocation, parse_destination
from wmtp_storage_sync.engine import resolve_selection
from wmtp_storage_sync.errors import SyncError


@pytest.mark.parametrize(
    "dest, expected",
    [
        ("s3://my-bucket", S3Location("my-bucket", "")),
        ("s3://my-bucket/a/b/", S3Location("my-bucket", "a/b")),
        ("vessl://team-storage/models", VesslLocation("team-storage", "models", "")),
        ("vessl://team-storage/models/v2/mtp", VesslLocation("team-storage", "models", "v2/mtp")),
        ("/mnt/backup", LocalLocation(Path("/mnt/backup"))),
        ("file:///mnt/backup", LocalLocation(Path("/mnt/backup"))),
    ],
)
def test_destinations_parse(dest, expected):
    assert parse_destination(dest) == expected


@pytest.mark.parametrize(
    "dest, message",
    [
        ("gs://bucket/x", "unsupported scheme gs://"),
        ("s3://Bad_Bucket/x", "'Bad_Bucket' is not a valid bucket name"),
        ("s3://", "is not a valid bucket name"),
        ("s3://bucket/../x", "'.' and '..' are not allowed"),
        ("vessl://only-storage", "expected vessl://STORAGE/VOLUME"),
        ("file://relative", "needs an absolute path"),
        ("", "--dest is required"),
    ],
)
def test_bad_destinations_name_the_problem(dest, message):
    with pytest.raises(SyncError, match=message):
        parse_destination(dest)


def test_paths_resolve_from_cwd_or_root(tmp_path, monkeypatch):
    root = tmp_path / "storage"
    (root / "models_v2" / "m").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_selection(root, ["storage/models_v2/m"], "up") == ["models_v2/m"]
    assert resolve_selection(root, ["models_v2/m/"], "up") == ["models_v2/m"]
    assert resolve_selection(root, [], "up") == [""]
    assert resolve_selection(root, ["datasets_v2/new"], "down") == ["datasets_v2/new"]  # may not exist yet


@pytest.mark.parametrize(
    "path, message",
    [
        ("models_v2/missing", "no such file or directory under"),
        ("/etc", "outside the sync root"),
        ("../x", "'..' is not allowed"),
    ],
)
def test_bad_paths_are_one_line(tmp_path, monkeypatch, path, message):
    root = tmp_path / "storage"
    root.mkdir()
    monkeypatch.chdir(tmp_path / "storage")
    with pytest.raises(SyncError, match=message):
        resolve_selection(root, [path], "up")
