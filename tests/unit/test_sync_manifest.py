"""Manifests, the local scan, the hash cache and the S3 part arithmetic of `wmtp sync-storage`."""

import base64
import hashlib
import os

import pytest

from wmtp_storage_sync.backends.s3 import MAX_PARTS, MiB, composite_checksum, part_size_for
from wmtp_storage_sync.errors import SyncError
from wmtp_storage_sync.manifest import (
    MANIFEST_NAME,
    PARTIAL_SUFFIX,
    FileEntry,
    HashCache,
    Manifest,
    is_selected,
    scan_local,
    sha256_file,
)


def test_manifest_round_trip_keeps_every_field():
    manifest = Manifest({"a/b.bin": FileEntry(3, "ab" * 32, '"etag"'), "c": FileEntry(0, "cd" * 32)})
    again = Manifest.from_bytes(manifest.to_bytes(), "here")
    assert again.files == manifest.files


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b'{"format": "other", "version": 1, "files": {}}',
        b'{"format": "wmtp-sync-manifest", "version": 1, "files": {"a": {"size": 1}}}',
    ],
)
def test_bad_manifest_is_one_error_naming_where(data):
    with pytest.raises(SyncError, match=r"^s3://b/p/\.wmtp-manifest\.json: not a valid sync manifest"):
        Manifest.from_bytes(data, "s3://b/p/.wmtp-manifest.json")


def test_scan_skips_manifest_fragments_and_symlinked_dirs(tmp_path):
    root = tmp_path / "root"
    (root / "models").mkdir(parents=True)
    (root / "models" / "w.bin").write_bytes(b"123")
    (root / "top.txt").write_text("x")
    (root / MANIFEST_NAME).write_text("{}")
    (root / "models" / f".w.bin.1{PARTIAL_SUFFIX}").write_bytes(b"half")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "big").write_bytes(b"y")
    (root / "link").symlink_to(tmp_path / "elsewhere")
    assert sorted(scan_local(root, [""])) == ["models/w.bin", "top.txt"]
    assert sorted(scan_local(root, ["models"])) == ["models/w.bin"]
    assert scan_local(root, ["models"])["models/w.bin"].size == 3


def test_selection_matches_whole_path_segments():
    assert is_selected("models/a/x", ["models/a"]) and is_selected("models/a", ["models/a"])
    assert not is_selected("models/ab/x", ["models/a"])
    assert is_selected("anything", [""])


def test_hash_cache_hits_on_same_size_and_mtime_only(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    path = root / "f.bin"
    path.write_bytes(b"first")
    f = scan_local(root, [""])["f.bin"]
    cache = HashCache(root, tmp_path / "cache")
    assert cache.lookup(f) is None
    cache.store(f, sha256_file(path))
    cache.save()
    assert not any(p.name.endswith(".json") for p in root.rglob("*")), "the cache must live outside the synced tree"

    reloaded = HashCache(root, tmp_path / "cache")
    assert reloaded.lookup(f) == hashlib.sha256(b"first").hexdigest()
    path.write_bytes(b"other")  # same size, new mtime
    os.utime(path, ns=(f.mtime_ns + 1_000_000, f.mtime_ns + 1_000_000))
    assert reloaded.lookup(scan_local(root, [""])["f.bin"]) is None


def test_part_size_grows_only_past_ten_thousand_parts():
    assert part_size_for(100 * MiB, 16 * MiB) == 16 * MiB
    assert part_size_for(100 * MiB, 1 * MiB) == 5 * MiB  # S3's minimum part size
    huge = 400 * 1024 * MiB
    grown = part_size_for(huge, 16 * MiB)
    assert grown > 16 * MiB and grown % MiB == 0 and -(-huge // grown) <= MAX_PARTS


def test_composite_checksum_is_sha256_of_part_digests():
    parts = [b"a" * 10, b"b" * 3]
    digests = [hashlib.sha256(p).digest() for p in parts]
    expected = base64.b64encode(hashlib.sha256(digests[0] + digests[1]).digest()).decode() + "-2"
    assert composite_checksum(digests) == expected
