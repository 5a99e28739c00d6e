"""The sync engine against a local-directory destination: manifests, no-op re-syncs, repairs, pulls."""

import builtins
import collections
import hashlib
import json
import os
from pathlib import Path

import pytest

from storage_sync import MANIFEST_NAME, SyncError, SyncOptions, engine, manifest, sync
from storage_sync.backends import local as local_backend
from storage_sync.manifest import PARTIAL_SUFFIX


class ReadCounter:
    """Bytes read from each file under `root` by the given sync modules, however they read them: through
    the file objects they `open` (read, readinto) or with `os.pread` on those files' descriptors."""

    def __init__(self, monkeypatch, root: Path, modules):
        self.root = root.resolve()
        self.bytes: collections.Counter = collections.Counter()
        self._fds: dict[int, str] = {}
        real_open, real_pread = builtins.open, os.pread
        counter = self

        class Counted:
            def __init__(self, f, rel):
                self._f, self._rel = f, rel

            def read(self, *args):
                data = self._f.read(*args)
                counter.bytes[self._rel] += len(data)
                return data

            def readinto(self, buffer):
                n = self._f.readinto(buffer)
                counter.bytes[self._rel] += n or 0
                return n

            def fileno(self):
                fd = self._f.fileno()
                counter._fds[fd] = self._rel
                return fd

            def close(self):
                counter._fds = {fd: rel for fd, rel in counter._fds.items() if rel != self._rel}
                self._f.close()

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.close()

            def __getattr__(self, name):
                return getattr(self._f, name)

        def counting_open(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            if isinstance(file, (str, os.PathLike)) and "r" in mode:
                path = Path(file).resolve()
                if counter.root in path.parents:
                    return Counted(f, path.relative_to(counter.root).as_posix())
            return f

        def counting_pread(fd, length, offset):
            data = real_pread(fd, length, offset)
            if fd in counter._fds:
                counter.bytes[counter._fds[fd]] += len(data)
            return data

        for module in modules:
            monkeypatch.setattr(module, "open", counting_open, raising=False)
        monkeypatch.setattr(os, "pread", counting_pread)


@pytest.fixture
def tree(tmp_path, monkeypatch):
    monkeypatch.setenv("WMTP_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "storage"
    (root / "models_v2" / "m").mkdir(parents=True)
    (root / "models_v2" / "m" / "model.safetensors").write_bytes(os.urandom(300_000))
    (root / "models_v2" / "m" / "params.json").write_text('{"dim": 8}')
    (root / "datasets_v2").mkdir()
    (root / "datasets_v2" / "train.jsonl").write_text('{"a": 1}\n' * 100)
    return root


def run(root, dest, **kw):
    return sync(SyncOptions(dest=str(dest), root=root, progress=False, **kw))


def manifest_of(dest):
    return json.loads((dest / MANIFEST_NAME).read_text())["files"]


def test_first_sync_copies_all_and_second_copies_nothing(tree, tmp_path):
    dest = tmp_path / "backup"
    first = run(tree, dest)
    assert len(first.transferred) == 3 and first.manifest_written
    assert (dest / "models_v2/m/model.safetensors").read_bytes() == (tree / "models_v2/m/model.safetensors").read_bytes()
    assert set(manifest_of(dest)) == {"models_v2/m/model.safetensors", "models_v2/m/params.json", "datasets_v2/train.jsonl"}
    mtimes = {p: p.stat().st_mtime_ns for p in dest.rglob("*")}

    second = run(tree, dest)
    assert second.transferred == [] and second.unchanged == 3 and not second.manifest_written
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*")} == mtimes  # nothing was rewritten


def test_cold_sync_reads_each_file_once_and_records_its_sha256(tree, tmp_path, monkeypatch):
    reads = ReadCounter(monkeypatch, tree, [manifest, engine, local_backend])
    dest = tmp_path / "backup"
    files = {p.relative_to(tree).as_posix(): p.read_bytes() for p in tree.rglob("*") if p.is_file()}
    assert len(run(tree, dest).transferred) == 3
    assert dict(reads.bytes) == {rel: len(data) for rel, data in files.items()}  # one read: hash while copying
    assert {rel: (e["size"], e["sha256"]) for rel, e in manifest_of(dest).items()} == {
        rel: (len(data), hashlib.sha256(data).hexdigest()) for rel, data in files.items()}

    reads.bytes.clear()
    assert run(tree, dest).transferred == [] and not reads.bytes  # the hashes went to the cache


def test_one_changed_file_is_one_transfer(tree, tmp_path):
    dest = tmp_path / "backup"
    run(tree, dest)
    (tree / "models_v2/m/params.json").write_text('{"dim": 16}')
    report = run(tree, dest)
    assert [(t.rel, t.reason) for t in report.transferred] == [("models_v2/m/params.json", "changed")]
    assert (dest / "models_v2/m/params.json").read_text() == '{"dim": 16}'


def test_replaced_remote_file_is_repaired_and_silent_corruption_needs_verify(tree, tmp_path):
    dest = tmp_path / "backup"
    run(tree, dest)
    target = dest / "datasets_v2/train.jsonl"
    original = target.read_bytes()

    target.write_bytes(b"X" * len(original))  # overwritten: a new mtime shows in the listing
    report = run(tree, dest)
    assert [(t.rel, t.reason) for t in report.repaired] == [("datasets_v2/train.jsonl", "replaced on remote")]
    assert target.read_bytes() == original

    stat = target.stat()
    target.write_bytes(b"Y" * len(original))  # silent corruption: same size, mtime restored
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert run(tree, dest).transferred == []  # the cheap check cannot see it …
    verified = run(tree, dest, verify=True)  # … re-reading does
    assert [(t.rel, t.reason) for t in verified.repaired] == [("datasets_v2/train.jsonl", "corrupt on remote")]
    assert target.read_bytes() == original


def test_delete_removes_only_what_the_source_lacks(tree, tmp_path):
    dest = tmp_path / "backup"
    run(tree, dest)
    (tree / "datasets_v2/train.jsonl").unlink()
    kept = run(tree, dest)
    assert kept.deleted == [] and (dest / "datasets_v2/train.jsonl").exists()
    assert "datasets_v2/train.jsonl" in manifest_of(dest)  # still stored, still vouched for

    dry = run(tree, dest, delete=True, dry_run=True)
    assert dry.deleted == ["datasets_v2/train.jsonl"] and (dest / "datasets_v2/train.jsonl").exists()
    deleted = run(tree, dest, delete=True)
    assert deleted.deleted == ["datasets_v2/train.jsonl"] and not (dest / "datasets_v2/train.jsonl").exists()
    assert "datasets_v2/train.jsonl" not in manifest_of(dest)


def test_delete_interrupted_after_the_manifest_leaves_no_false_entry(tree, tmp_path, monkeypatch):
    dest = tmp_path / "backup"
    run(tree, dest)
    (tree / "datasets_v2/train.jsonl").unlink()

    def crash(self, rels):
        raise OSError("connection lost")

    with monkeypatch.context() as patch:
        patch.setattr(local_backend.LocalDirBackend, "delete", crash)
        with pytest.raises(OSError):
            run(tree, dest, delete=True)
    # The manifest already says the file is gone; the object is a leftover the re-run removes.
    assert "datasets_v2/train.jsonl" not in manifest_of(dest)
    assert (dest / "datasets_v2/train.jsonl").exists()
    again = run(tree, dest, delete=True)
    assert again.deleted == ["datasets_v2/train.jsonl"] and not (dest / "datasets_v2/train.jsonl").exists()


def test_dry_run_moves_nothing(tree, tmp_path):
    dest = tmp_path / "backup"
    report = run(tree, dest, dry_run=True)
    assert len(report.transferred) == 3 and report.bytes_transferred > 300_000
    assert not dest.exists()


def test_pull_selected_model_then_nothing_then_delete(tree, tmp_path):
    dest = tmp_path / "backup"
    run(tree, dest)
    local = tmp_path / "other" / "storage"
    pulled = run(local, dest, direction="down", paths=["models_v2/m"])
    assert sorted(t.rel for t in pulled.transferred) == ["models_v2/m/model.safetensors", "models_v2/m/params.json"]
    assert not (local / "datasets_v2").exists()
    assert (local / "models_v2/m/model.safetensors").read_bytes() == (tree / "models_v2/m/model.safetensors").read_bytes()
    assert run(local, dest, direction="down", paths=["models_v2/m"]).transferred == []

    (local / "models_v2/m/stray.txt").write_text("not in the manifest")
    (local / "models_v2/m/params.json").write_text("edited locally")
    again = run(local, dest, direction="down", paths=["models_v2/m"], delete=True)
    assert [t.rel for t in again.transferred] == ["models_v2/m/params.json"] and again.deleted == ["models_v2/m/stray.txt"]
    assert (local / "models_v2/m/params.json").read_text() == '{"dim": 8}'


def test_pull_of_corrupt_object_fails_naming_it_and_leaves_no_fragment(tree, tmp_path):
    dest = tmp_path / "backup"
    run(tree, dest)
    (dest / "models_v2/m/params.json").write_text('{"dim": 9}')
    local = tmp_path / "pull"
    with pytest.raises(SyncError, match=r"models_v2/m/params\.json: downloaded content has SHA-256 .* corrupt"):
        run(local, dest, direction="down")
    assert not list(local.rglob(f"*{PARTIAL_SUFFIX}"))
    assert not (local / "models_v2/m/params.json").exists()


def test_pull_needs_a_complete_sync_and_safe_paths(tree, tmp_path):
    dest = tmp_path / "backup"
    dest.mkdir()
    with pytest.raises(SyncError, match="no .wmtp-manifest.json there"):
        run(tmp_path / "pull", dest, direction="down")
    manifest = {"format": "wmtp-sync-manifest", "version": 1,
                "files": {"../../etc/evil": {"size": 1, "sha256": "00" * 32}}}
    (dest / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(SyncError, match="unsafe path '../../etc/evil'"):
        run(tmp_path / "pull", dest, direction="down")


def test_destination_inside_the_root_is_refused(tree):
    with pytest.raises(SyncError, match="overlaps the sync root"):
        run(tree, tree / "backup")
    with pytest.raises(SyncError, match="the sync root does not exist"):
        run(tree / "nope", tree.parent / "backup")
