"""The sync engine against a local-directory destination: manifests, no-op re-syncs, repairs, pulls."""

import builtins
import collections
import hashlib
import json
import os
from pathlib import Path

import pytest

from wmtp_storage_sync import MANIFEST_NAME, SyncError, SyncOptions, engine, manifest, sync
from wmtp_storage_sync.backends import local as local_backend
from wmtp_storage_sync.manifest import PARTIAL_SUFFIX


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
    assert (dest / "models_v2/m/model.safetensors").read_bytes() == (
        tree / "models_v2/m/model.safetensors"
    ).read_bytes()
    assert set(manifest_of(dest)) == {
        "models_v2/m/model.safetensors",
        "models_v2/m/params.json",
        "datasets_v2/train.jsonl",
    }
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
        rel: (len(data), hashlib.sha256(data).hexdigest()) for rel, data in files.items()
    }

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
    assert (local / "models_v2/m/model.safetensors").read_bytes() == (
        tree / "models_v2/m/model.safetensors"
    ).read_bytes()
    assert run(local, dest, direction="down", paths=["models_v2/m"]).transferred == []

    (local / "models_v2/m/stray.txt").write_text("not in the manifest")
    (local / "models_v2/m/params.json").write_text("edited locally")
    again = run(local, dest, direction="down", paths=["models_v2/m"], delete=True)
    assert [t.rel for t in again.transferred] == ["models_v2/m/params.json"] and again.deleted == [
        "models_v2/m/stray.txt"
    ]
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
    manifest = {
        "format": "wmtp-sync-manifest",
        "version": 1,
        "files": {"../../etc/evil": {"size": 1, "sha256": "00" * 32}},
    }
    (dest / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(SyncError, match="unsafe path '../../etc/evil'"):
        run(tmp_path / "pull", dest, direction="down")


def test_destination_inside_the_root_is_refused(tree):
    with pytest.raises(SyncError, match="overlaps the sync root"):
        run(tree, tree / "backup")
    with pytest.raises(SyncError, match="the sync root does not exist"):
        run(tree / "nope", tree.parent / "backup")


def all_bytes_under(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file())


def test_push_never_follows_a_symlink_out_of_the_root(tree, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "hostname").write_text("OUTSIDE-THE-ROOT\n")
    (tree / "models_v2" / "hostname").symlink_to(outside / "hostname")  # a file out of the root
    (tree / "linked_dir").symlink_to(outside, target_is_directory=True)  # a directory out of the root
    (tree / "broken").symlink_to(tmp_path / "nothing-here")
    (tree / "models_v2" / "m" / "train-copy.jsonl").symlink_to(tree / "datasets_v2" / "train.jsonl")  # inside
    dest = tmp_path / "backup"
    report = run(tree, dest)
    assert "OUTSIDE-THE-ROOT" not in all_bytes_under(dest).decode(errors="replace")
    assert set(manifest_of(dest)) == {
        "models_v2/m/model.safetensors",
        "models_v2/m/params.json",
        "models_v2/m/train-copy.jsonl",
        "datasets_v2/train.jsonl",
    }
    # A link that stays inside the root is sent as the file it names, under the link's path.
    assert (dest / "models_v2/m/train-copy.jsonl").read_bytes() == (tree / "datasets_v2/train.jsonl").read_bytes()
    assert dict(report.skipped) == {
        "models_v2/hostname": "a symlink out of the sync root",
        "linked_dir": "a symlinked directory (not followed)",
        "broken": "a broken symlink",
    }
    # Named on the command line, a link out of the root is not followed either.
    named = run(tree, tmp_path / "backup2", paths=["linked_dir", "models_v2/hostname"])
    assert named.transferred == [] and sorted(dict(named.skipped)) == ["linked_dir", "models_v2/hostname"]
    assert "OUTSIDE-THE-ROOT" not in all_bytes_under(tmp_path / "backup2").decode(errors="replace")


def test_push_leaves_out_checkpoints_being_written_temp_files_and_the_run_lock(tree, tmp_path):
    import tempfile

    stage = tree / "checkpoints" / "smoke-1" / "baseline"
    ckpts = stage / "checkpoints"
    (ckpts / "step_000002").mkdir(parents=True)
    (ckpts / "step_000002" / "train_state.pt").write_bytes(b"complete")
    # As wmtp/train/checkpointing.py names them: mkdtemp(prefix=".NAME.") while writing, ".NAME.old" while replacing.
    for prefix in (".step_000004.", ".best.", ".final."):
        (Path(tempfile.mkdtemp(prefix=prefix, dir=ckpts)) / "train_state.pt").write_bytes(b"half")
    (ckpts / ".best.old").mkdir()
    (ckpts / ".best.old" / "train_state.pt").write_bytes(b"being removed")
    (stage.parent / ".wmtp.lock").write_text("pid 123\n")  # the run dir's writer lock
    (stage / "metrics.jsonl").write_text('{"step": 1}\n')
    (stage / ".metrics.jsonl.tmp").write_text('{"step": 1}\n')  # an atomic rewrite in progress
    staging = Path(tempfile.mkdtemp(prefix=".micro-mtp.", dir=tree / "models_v2"))  # wmtp/model/checkpoint.py
    (staging / "params.json").write_text("{}")
    (tree / "models_v2" / "m" / ".gitattributes").write_text("*.safetensors filter=lfs\n")  # hidden, but data

    dest = tmp_path / "backup"
    report = run(tree, dest)
    assert sorted(manifest_of(dest)) == [
        "checkpoints/smoke-1/baseline/checkpoints/step_000002/train_state.pt",
        "checkpoints/smoke-1/baseline/metrics.jsonl",
        "datasets_v2/train.jsonl",
        "models_v2/m/.gitattributes",
        "models_v2/m/model.safetensors",
        "models_v2/m/params.json",
    ]
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == sorted(
        [*manifest_of(dest), MANIFEST_NAME]
    )
    assert report.skipped == []  # expected leftovers, not worth a warning
    # Named explicitly, a checkpoint being written is still left out.
    assert (
        run(
            tree,
            tmp_path / "backup2",
            paths=[str(next(ckpts.glob(".step_000004.*")).relative_to(tree))],
        ).transferred
        == []
    )


def test_pull_never_writes_through_a_symlinked_directory(tree, tmp_path):
    dest = tmp_path / "backup"
    run(tree, dest)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    local = tmp_path / "pull"
    local.mkdir()
    (local / "models_v2").symlink_to(elsewhere, target_is_directory=True)
    for dry_run in (True, False):
        with pytest.raises(
            SyncError,
            match=r"models_v2: a symlinked directory inside the sync root; a pull "
            r"never writes through one",
        ):
            run(local, dest, direction="down", dry_run=dry_run)
    assert list(elsewhere.iterdir()) == []
    assert not (local / "datasets_v2").exists()  # refused before anything was fetched

    # Deeper down too; a root that is itself a symlink is fine.
    (local / "models_v2").unlink()
    (local / "models_v2").mkdir()
    (local / "models_v2" / "m").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(SyncError, match=r"models_v2/m: a symlinked directory"):
        run(local, dest, direction="down", paths=["models_v2"])
    assert list(elsewhere.iterdir()) == []
    (local / "models_v2" / "m").unlink()
    (tmp_path / "root-link").symlink_to(local, target_is_directory=True)
    pulled = run(tmp_path / "root-link", dest, direction="down")
    assert len(pulled.transferred) == 3 and (local / "models_v2/m/params.json").read_text() == '{"dim": 8}'
