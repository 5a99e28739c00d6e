"""`wmtp sync-storage` against a real S3-protocol server (moto's ThreadedMotoServer on 127.0.0.1).

Buckets have versioning on, so the server itself counts how often each key was written: "nothing was
re-sent" is checked by the store, not by the sync's own report.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.s3_server import make_tree
from tests.unit.test_sync_local import ReadCounter
from wmtp_storage_sync import MANIFEST_NAME, SyncError, SyncOptions, engine, manifest, sync
from wmtp_storage_sync.backends import s3 as s3_backend
from wmtp_storage_sync.backends.s3 import S3Backend
from wmtp_storage_sync.manifest import PARTIAL_SUFFIX

REPO_ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024


def versions(s3, bucket: str) -> dict[str, int]:
    """How many times each key was written (PUT or completed multipart), per the server."""
    counts: dict[str, int] = {}
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for v in page.get("Versions", ()):
            counts[v["Key"]] = counts.get(v["Key"], 0) + 1
    return counts


def remote_manifest(s3, bucket: str, prefix: str) -> dict:
    return json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}/{MANIFEST_NAME}")["Body"].read())["files"]


def local_manifest(root: Path) -> dict:
    return {
        p.relative_to(root).as_posix(): (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in root.rglob("*")
        if p.is_file()
    }


def run(root, bucket, endpoint, **kw):
    return sync(SyncOptions(dest=f"s3://{bucket}/team", root=root, endpoint_url=endpoint, progress=False, **kw))


TREE = {
    "models_v2/m/model.safetensors": 700_000,
    "models_v2/m/params.json": 120,
    "datasets_v2/train.jsonl": 50_000,
    "datasets_v2/valid.jsonl": 9_000,
}


def test_first_uploads_all_second_nothing_one_change_one(s3, bucket, moto_endpoint, s3_env):
    root = make_tree(s3_env / "storage", TREE)
    first = run(root, bucket, moto_endpoint)
    assert len(first.transferred) == 4 and first.manifest_written
    assert {k: (v["size"], v["sha256"]) for k, v in remote_manifest(s3, bucket, "team").items()} == local_manifest(root)
    body = s3.get_object(Bucket=bucket, Key="team/models_v2/m/model.safetensors")["Body"].read()
    assert body == (root / "models_v2/m/model.safetensors").read_bytes()

    second = run(root, bucket, moto_endpoint)
    assert second.transferred == [] and second.unchanged == 4 and not second.manifest_written
    assert set(versions(s3, bucket).values()) == {1}  # not one object (manifest included) was written again

    (root / "datasets_v2/valid.jsonl").write_text("new content\n")
    third = run(root, bucket, moto_endpoint)
    assert [(t.rel, t.reason) for t in third.transferred] == [("datasets_v2/valid.jsonl", "changed")]
    written = versions(s3, bucket)
    assert written.pop("team/datasets_v2/valid.jsonl") == 2 and written.pop(f"team/{MANIFEST_NAME}") == 2
    assert set(written.values()) == {1}
    assert {k: (v["size"], v["sha256"]) for k, v in remote_manifest(s3, bucket, "team").items()} == local_manifest(root)


def test_large_file_goes_multipart_with_verified_checksums_and_pulls_back(s3, bucket, moto_endpoint, s3_env):
    root = make_tree(s3_env / "storage", {"models_v2/big/model.safetensors": 12 * MiB + 17, "small.txt": 10})
    run(root, bucket, moto_endpoint, part_size=5 * MiB)
    head = s3.head_object(Bucket=bucket, Key="team/models_v2/big/model.safetensors", ChecksumMode="ENABLED")
    assert head["ETag"].strip('"').endswith("-3")  # three parts
    assert (
        head["Metadata"]["sha256"]
        == hashlib.sha256((root / "models_v2/big/model.safetensors").read_bytes()).hexdigest()
    )

    pulled = run(s3_env / "pulled", bucket, moto_endpoint, direction="down", part_size=5 * MiB)
    assert len(pulled.transferred) == 2
    assert local_manifest(s3_env / "pulled") == local_manifest(root)


def on_client(monkeypatch, event: str, handler) -> None:
    """Register `handler` for a botocore event on the client of every S3Backend the test creates."""
    original_init = S3Backend.__init__

    def init_and_register(self, *args, **kw):
        original_init(self, *args, **kw)
        self.client.meta.events.register(event, handler)

    monkeypatch.setattr(S3Backend, "__init__", init_and_register)


def test_cold_upload_reads_single_part_files_once_and_verifies_from_the_response(
    s3, bucket, moto_endpoint, s3_env, monkeypatch
):
    files = {"models_v2/m/model.safetensors": 3 * MiB + 5, "models_v2/m/params.json": 120, "big.bin": 12 * MiB + 17}
    root = make_tree(s3_env / "storage", files)
    reads = ReadCounter(monkeypatch, root, [manifest, engine, s3_backend])
    heads: list[str] = []
    on_client(monkeypatch, "provide-client-params.s3.HeadObject", lambda params, **_: heads.append(params["Key"]))

    report = run(root, bucket, moto_endpoint, part_size=5 * MiB)
    assert sorted(t.rel for t in report.transferred) == sorted(files) and report.manifest_written
    # A file of one part is read once: hashed in memory and sent from there. A multipart file is read
    # twice: its SHA-256 must be in the upload's metadata before the first part goes out.
    assert dict(reads.bytes) == {**files, "big.bin": 2 * files["big.bin"]}
    # The PUT's answer carries the stored object's checksum, so single-part uploads need no HEAD.
    assert "team/models_v2/m/params.json" not in heads and "team/models_v2/m/model.safetensors" not in heads
    recorded = remote_manifest(s3, bucket, "team")
    assert {k: (v["size"], v["sha256"]) for k, v in recorded.items()} == local_manifest(root)
    for rel, entry in recorded.items():
        head = s3.head_object(Bucket=bucket, Key=f"team/{rel}")
        assert head["Metadata"]["sha256"] == entry["sha256"] and head["ETag"] == entry["etag"]

    reads.bytes.clear()
    assert run(root, bucket, moto_endpoint, part_size=5 * MiB).transferred == [] and not reads.bytes


def test_upload_fails_when_the_server_reports_another_checksum(s3, bucket, moto_endpoint, s3_env, monkeypatch):
    root = make_tree(s3_env / "storage", {"a.bin": 1000, "b.bin": 2000})

    def misreport(parsed, **_):
        if parsed.get("ChecksumSHA256"):
            parsed["ChecksumSHA256"] = base64.b64encode(hashlib.sha256(b"other bytes").digest()).decode()

    on_client(monkeypatch, "after-call.s3.PutObject", misreport)
    with pytest.raises(SyncError, match=r"a\.bin|b\.bin") as failure:
        run(root, bucket, moto_endpoint)
    assert "server checksum" in str(failure.value) and "differs from the expected" in str(failure.value)
    assert f"team/{MANIFEST_NAME}" not in versions(s3, bucket)


def test_server_reporting_no_checksum_gets_a_head(s3, bucket, moto_endpoint, s3_env, monkeypatch):
    root = make_tree(s3_env / "storage", {"a.bin": 1000, "b.bin": 2000})
    heads: list[str] = []
    monkeypatch.setattr(
        S3Backend, "_head", lambda self, rel, _real=S3Backend._head: heads.append(rel) or _real(self, rel)
    )
    on_client(monkeypatch, "after-call.s3.PutObject", lambda parsed, **_: parsed.pop("ChecksumSHA256", None))
    report = run(root, bucket, moto_endpoint)
    assert len(report.transferred) == 2 and sorted(heads) == ["a.bin", "b.bin"]

    (root / "a.bin").write_bytes(b"x" * 1000)
    stored_metadata = {"sha256": "0" * 64}  # a store that lost the metadata: the HEAD check must notice
    monkeypatch.setattr(
        S3Backend, "_head", lambda self, rel, _real=S3Backend._head: {**_real(self, rel), "Metadata": stored_metadata}
    )
    with pytest.raises(SyncError, match=r"a\.bin: stored sha256 metadata 0+ differs from the file's"):
        run(root, bucket, moto_endpoint)


def test_upload_bodies_are_signed_with_their_checksum_not_hashed_again(s3, bucket, moto_endpoint, s3_env, monkeypatch):
    """Over plain http botocore signs every body with its SHA-256; uploads reuse the digest they send
    as x-amz-checksum-sha256 instead of hashing the body a second time, and the signature still names it."""
    import botocore.auth

    root = make_tree(s3_env / "storage", {"small.bin": 1000, "big.bin": 11 * MiB})
    hashed_by_botocore: list[str] = []  # methods of the requests whose non-empty body botocore hashed
    real_payload = botocore.auth.S3SigV4Auth.payload

    def spying_payload(self, request):
        if request.body:
            hashed_by_botocore.append(request.method)
        return real_payload(self, request)

    monkeypatch.setattr(botocore.auth.S3SigV4Auth, "payload", spying_payload)
    sent: list[tuple[bytes, bytes, bytes]] = []

    def record(request, **_):
        if request.method == "PUT":
            body = request.body
            if hasattr(body, "read"):  # botocore may wrap a bytes body in a seekable stream
                position = body.tell()
                body, _ = body.read(), body.seek(position)
            sent.append(
                (request.headers.get("X-Amz-Content-SHA256"), request.headers.get("x-amz-checksum-sha256"), body)
            )

    on_client(monkeypatch, "before-send.s3", record)

    run(root, bucket, moto_endpoint, part_size=5 * MiB)
    bodies = [(payload, checksum, body) for payload, checksum, body in sent if body]
    assert len(bodies) == 1 + 3 + 1  # small.bin, three parts of big.bin, the manifest
    for payload, checksum, body in bodies:
        digest = hashlib.sha256(body).digest()
        assert payload.decode() == digest.hex() and checksum.decode() == base64.b64encode(digest).decode()
    assert "PUT" not in hashed_by_botocore


def test_interrupted_multipart_upload_reuses_stored_parts(s3, bucket, moto_endpoint, s3_env, monkeypatch):
    root = make_tree(s3_env / "storage", {"big.bin": 16 * MiB})
    real_put_part = S3Backend._put_part
    sent: list[int] = []

    def failing_after_two(self, f, fd, upload_id, number, *args):
        if number > 2:
            raise SyncError("network went away")
        sent.append(number)
        return real_put_part(self, f, fd, upload_id, number, *args)

    monkeypatch.setattr(S3Backend, "_put_part", failing_after_two)
    with pytest.raises(SyncError, match="manifest of s3://.* was not updated"):
        run(root, bucket, moto_endpoint, part_size=5 * MiB, jobs=1)
    assert sorted(sent) == [1, 2] and "team/big.bin" not in versions(s3, bucket)

    uploaded: list[int] = []
    monkeypatch.setattr(S3Backend, "_put_part", real_put_part)
    counting = lambda params, **_: uploaded.append(params["PartNumber"])  # noqa: E731
    original_init = S3Backend.__init__

    def init_and_count(self, *args, **kw):
        original_init(self, *args, **kw)
        self.client.meta.events.register("provide-client-params.s3.UploadPart", counting)

    monkeypatch.setattr(S3Backend, "__init__", init_and_count)
    report = run(root, bucket, moto_endpoint, part_size=5 * MiB)
    assert sorted(uploaded) == [3, 4]  # parts 1 and 2 were already on the server
    assert [t.rel for t in report.transferred] == ["big.bin"]
    body = s3.get_object(Bucket=bucket, Key="team/big.bin")["Body"].read()
    assert body == (root / "big.bin").read_bytes()


@pytest.mark.slow
def test_killed_sync_resumes_without_resending(s3, bucket, moto_endpoint, s3_env):
    """SIGKILL a real `python -m wmtp_cli.main sync-storage` once objects appear; the re-run finishes the job."""
    n_files = 150
    root = make_tree(s3_env / "storage", {f"shards/{i:03d}.bin": 256 * 1024 for i in range(n_files)})
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [
        sys.executable,
        "-m",
        "wmtp_cli.main",
        "sync-storage",
        "--root",
        str(root),
        "--dest",
        f"s3://{bucket}/team",
        "--endpoint-url",
        moto_endpoint,
        "--jobs",
        "1",
        "--no-progress",
    ]
    proc = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            if s3.list_objects_v2(Bucket=bucket, Prefix="team/").get("KeyCount", 0) >= 5:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read().decode()
    # A PUT whose body was sent before the kill may still be completing in the server's thread:
    # take the listing once it has stopped changing.
    stored, previous = None, set()
    while stored != previous:
        previous, stored = (
            stored,
            {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="team/").get("Contents", ())},
        )
        time.sleep(0.3)
    assert f"team/{MANIFEST_NAME}" not in stored, "a killed sync must not look complete"
    assert 5 <= len(stored) < n_files

    report = run(root, bucket, moto_endpoint)
    assert len(report.transferred) == n_files - len(stored)
    assert report.unchanged == len(stored)  # recognised by the SHA-256 each object carries
    written = versions(s3, bucket)
    assert len(written) == n_files + 1 and set(written.values()) == {1}  # nothing was sent twice
    assert {k: (v["size"], v["sha256"]) for k, v in remote_manifest(s3, bucket, "team").items()} == local_manifest(root)


def test_replaced_remote_object_is_detected_and_repaired(s3, bucket, moto_endpoint, s3_env):
    root = make_tree(s3_env / "storage", TREE)
    run(root, bucket, moto_endpoint)
    key = "team/datasets_v2/train.jsonl"
    s3.put_object(Bucket=bucket, Key=key, Body=b"\0" * 50_000)  # same size, other bytes
    report = run(root, bucket, moto_endpoint)
    assert [(t.rel, t.reason) for t in report.repaired] == [("datasets_v2/train.jsonl", "replaced on remote")]
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == (root / "datasets_v2/train.jsonl").read_bytes()


def corrupt_silently(s3, bucket: str, key: str, rel: str) -> None:
    """Replace an object's bytes and make the manifest agree with its new ETag, as if the store had
    rotted the data in place: only re-reading the content can notice."""
    size = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
    etag = s3.put_object(Bucket=bucket, Key=key, Body=b"\1" * size)["ETag"]
    manifest_key = f"team/{MANIFEST_NAME}"
    body = json.loads(s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    body["files"][rel]["etag"] = etag
    s3.put_object(Bucket=bucket, Key=manifest_key, Body=json.dumps(body).encode())


def test_verify_rereads_and_repairs_silent_corruption(s3, bucket, moto_endpoint, s3_env):
    root = make_tree(s3_env / "storage", TREE)
    run(root, bucket, moto_endpoint)
    corrupt_silently(s3, bucket, "team/models_v2/m/params.json", "models_v2/m/params.json")
    assert run(root, bucket, moto_endpoint).transferred == []
    dry = run(root, bucket, moto_endpoint, verify=True, dry_run=True)
    assert [(t.rel, t.reason) for t in dry.transferred] == [("models_v2/m/params.json", "corrupt on remote")]
    report = run(root, bucket, moto_endpoint, verify=True)
    assert [(t.rel, t.reason) for t in report.repaired] == [("models_v2/m/params.json", "corrupt on remote")]
    assert run(root, bucket, moto_endpoint, verify=True).transferred == []


def test_pull_detects_corrupt_object(s3, bucket, moto_endpoint, s3_env):
    root = make_tree(s3_env / "storage", TREE)
    run(root, bucket, moto_endpoint)
    corrupt_silently(s3, bucket, "team/datasets_v2/train.jsonl", "datasets_v2/train.jsonl")
    pulled = s3_env / "pulled"
    with pytest.raises(SyncError, match=r"datasets_v2/train\.jsonl: downloaded content has SHA-256 .* corrupt"):
        run(pulled, bucket, moto_endpoint, direction="down")
    assert not (pulled / "datasets_v2/train.jsonl").exists() and not list(pulled.rglob(f"*{PARTIAL_SUFFIX}"))


def test_pull_refuses_an_object_replaced_after_the_manifest(s3, bucket, moto_endpoint, s3_env):
    root = make_tree(s3_env / "storage", TREE)
    run(root, bucket, moto_endpoint)
    s3.put_object(Bucket=bucket, Key="team/datasets_v2/valid.jsonl", Body=b"other")
    with pytest.raises(SyncError, match=r"datasets_v2/valid\.jsonl: .*changed since the manifest"):
        run(s3_env / "pulled", bucket, moto_endpoint, direction="down", paths=["datasets_v2"])


def test_delete_and_direction_down(s3, bucket, moto_endpoint, s3_env):
    root = make_tree(s3_env / "storage", TREE)
    run(root, bucket, moto_endpoint)
    (root / "datasets_v2/valid.jsonl").unlink()
    run(root, bucket, moto_endpoint)
    assert "datasets_v2/valid.jsonl" in remote_manifest(s3, bucket, "team")  # kept without --delete
    report = run(root, bucket, moto_endpoint, delete=True)
    assert report.deleted == ["datasets_v2/valid.jsonl"]
    assert "datasets_v2/valid.jsonl" not in remote_manifest(s3, bucket, "team")
    listed = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="team/")["Contents"]}
    assert "team/datasets_v2/valid.jsonl" not in listed

    pulled = s3_env / "pulled"
    down = run(pulled, bucket, moto_endpoint, direction="down", paths=["models_v2/m"])
    assert sorted(t.rel for t in down.transferred) == ["models_v2/m/model.safetensors", "models_v2/m/params.json"]
    assert local_manifest(pulled / "models_v2") == local_manifest(root / "models_v2")
    assert run(pulled, bucket, moto_endpoint, direction="down", paths=["models_v2/m"]).transferred == []


def keys(s3, bucket: str) -> set[str]:
    return {
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for o in page.get("Contents", ())
    }


def test_push_sends_only_finished_files_under_the_root(s3, bucket, moto_endpoint, s3_env):
    import tempfile

    root = make_tree(s3_env / "storage", TREE)
    outside = make_tree(s3_env / "outside", {"hostname": 20})
    (root / "models_v2/m/hostname").symlink_to(outside / "hostname")
    (root / "elsewhere").symlink_to(outside, target_is_directory=True)
    (root / "models_v2/m/valid-copy.jsonl").symlink_to(root / "datasets_v2/valid.jsonl")  # inside: sent as a file
    ckpts = root / "checkpoints/run/baseline/checkpoints"
    make_tree(root, {"checkpoints/run/baseline/checkpoints/step_000002/train_state.pt": 64})
    (Path(tempfile.mkdtemp(prefix=".step_000004.", dir=ckpts)) / "train_state.pt").write_bytes(b"half written")
    (ckpts / ".final.old").mkdir()
    (ckpts / ".final.old" / "train_state.pt").write_bytes(b"being removed")
    (root / "checkpoints/run/.wmtp.lock").write_text("")

    report = run(root, bucket, moto_endpoint)
    assert keys(s3, bucket) == {f"team/{rel}" for rel in TREE} | {
        "team/models_v2/m/valid-copy.jsonl",
        "team/checkpoints/run/baseline/checkpoints/step_000002/train_state.pt",
        f"team/{MANIFEST_NAME}",
    }
    body = s3.get_object(Bucket=bucket, Key="team/models_v2/m/valid-copy.jsonl")["Body"].read()
    assert body == (root / "datasets_v2/valid.jsonl").read_bytes()
    assert sorted(rel for rel, _ in report.skipped) == ["elsewhere", "models_v2/m/hostname"]


def test_pull_refuses_a_symlinked_directory_in_the_root(s3, bucket, moto_endpoint, s3_env):
    root = make_tree(s3_env / "storage", TREE)
    run(root, bucket, moto_endpoint)
    elsewhere = s3_env / "elsewhere"
    elsewhere.mkdir()
    pulled = s3_env / "pulled"
    (pulled / "models_v2").mkdir(parents=True)
    (pulled / "models_v2/m").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(SyncError, match=r"models_v2/m: a symlinked directory inside the sync root") as refused:
        run(pulled, bucket, moto_endpoint, direction="down")
    assert len(str(refused.value).splitlines()) == 1
    assert list(elsewhere.iterdir()) == [] and not (pulled / "datasets_v2").exists()


def test_dry_run_moves_nothing_either_way(s3, bucket, moto_endpoint, s3_env):
    root = make_tree(s3_env / "storage", TREE)
    dry = run(root, bucket, moto_endpoint, dry_run=True)
    assert len(dry.transferred) == 4 and dry.bytes_transferred == sum(TREE.values())
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    run(root, bucket, moto_endpoint)
    pulled = s3_env / "pulled"
    assert len(run(pulled, bucket, moto_endpoint, direction="down", dry_run=True).transferred) == 4
    assert not pulled.exists() or not any(pulled.rglob("*"))


def test_store_errors_are_one_line(s3, moto_endpoint, s3_env, monkeypatch):
    root = make_tree(s3_env / "storage", {"a.txt": 3})
    with pytest.raises(SyncError, match=r"^s3://no-such-bucket-here: no such bucket$"):
        run(root, "no-such-bucket-here", moto_endpoint)
    with pytest.raises(SyncError, match=r"cannot reach http://127\.0\.0\.1:9"):
        run(root, "any-bucket", "http://127.0.0.1:9")
