"""S3-compatible object stores through boto3 (AWS S3, MinIO, Ceph, the S3 face of VESSL volumes).

Every object carries its file's SHA-256 twice: as user metadata (`x-amz-meta-sha256`, which lets a
re-run recognise objects an interrupted sync already uploaded) and as S3's own `ChecksumSHA256`
(full-object for a single PUT, per part for multipart), which a real S3 validates on arrival and
returns on HEAD. An upload is verified by the server's answer to the write itself: the checksum it
reports for the stored object must equal the one computed from the bytes sent; a server that reports
none gets a HEAD that checks size, metadata hash and checksum. Multipart uploads in flight are
journaled locally so a re-run reuses the parts already stored instead of sending them again.

A file of one part is read once: into memory, hashed there (its SHA-256 is both the manifest's hash
and the object's checksum) and sent from there. A multipart file is read twice: hashed whole first
(the upload's metadata must name its SHA-256 before the first part goes out), then part by part, each
part hashed for its own checksum and sent. The SigV4 payload hash that botocore would compute over
every request body once more (it signs bodies on plain-http endpoints) is taken from the request's
own SHA-256 checksum header instead — the same digest of the same bytes; a server that validates
either refuses a body that matches neither.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

from wmtp.common.files import atomic_output
from wmtp_storage_sync.backends.base import (
    Backend,
    FileChangedError,
    ObjectInfo,
    OnBytes,
    RemoteObject,
    check_unchanged,
)
from wmtp_storage_sync.errors import SyncError
from wmtp_storage_sync.manifest import (
    MANIFEST_NAME,
    PARTIAL_SUFFIX,
    FileEntry,
    LocalFile,
    Manifest,
    is_selected,
    sha256_file,
)

MiB = 1024 * 1024
MIN_PART_SIZE = 5 * MiB  # S3's lower bound for every part but the last
MAX_PARTS = 10_000  # S3's upper bound on parts per upload
SHA256_METADATA = "sha256"


def part_size_for(size: int, preferred: int) -> int:
    """The preferred part size, grown (in whole MiB) when the file would need more than 10,000 parts."""
    part = max(preferred, MIN_PART_SIZE)
    if size > part * MAX_PARTS:
        part = -(-size // MAX_PARTS)
        part = -(-part // MiB) * MiB
    return part


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def composite_checksum(part_digests: list[bytes]) -> str:
    """S3's checksum of a multipart object: SHA-256 over the parts' SHA-256 digests, then `-N`."""
    return f"{b64(hashlib.sha256(b''.join(part_digests)).digest())}-{len(part_digests)}"


class S3Backend(Backend):
    def __init__(
        self,
        bucket: str,
        prefix: str,
        *,
        endpoint_url: Optional[str] = None,
        credential_refresher: Optional[Callable[[], dict]] = None,
        initial_credentials: Optional[dict] = None,
        region: Optional[str] = None,
        path_style: bool = False,
        verify_tls: bool = True,
        jobs: int = 10,
        part_size: int = 16 * MiB,
        journal_dir: Optional[Path] = None,
        url: Optional[str] = None,
    ):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = url or (f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}")
        self.endpoint_url = endpoint_url
        self.part_size = part_size
        self.client = _make_client(
            endpoint_url, credential_refresher, initial_credentials, region, path_style, verify_tls, jobs
        )
        # Parts run on their own pool: the engine's file workers wait on parts, parts never wait on anything.
        self._parts = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="s3-part")
        self.journal = UploadJournal(journal_dir, self.url) if journal_dir else None

    # -- keys ---------------------------------------------------------------------------------
    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _rel(self, key: str) -> str:
        return key[len(self.prefix) + 1 :] if self.prefix else key

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn boto errors into one line naming the bucket/key (credentials never appear in them)."""
        import botocore.exceptions as bx

        try:
            yield
        except bx.NoCredentialsError:
            raise SyncError(
                f"{self.url}: no S3 credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)"
            ) from None
        except bx.PartialCredentialsError as exc:
            raise SyncError(
                f"{self.url}: incomplete S3 credentials ({exc.kwargs.get('cred_var', 'a variable')} missing)"
            ) from None
        except (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError) as exc:
            endpoint = self.client.meta.endpoint_url
            raise SyncError(f"{what}: cannot reach {endpoint} ({type(exc).__name__})") from None
        except bx.ClientError as exc:
            error = exc.response.get("Error", {})
            code = error.get("Code", "?")
            if code == "NoSuchBucket":
                raise SyncError(f"s3://{self.bucket}: no such bucket") from None
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "403"):
                raise SyncError(f"{what}: access denied ({code}); check the credentials for {self.url}") from None
            if code in ("PreconditionFailed", "412"):
                raise SyncError(f"{what}: the object changed since the manifest was written (ETag differs)") from None
            raise SyncError(f"{what}: {code} {error.get('Message', '')}".rstrip()) from None
        except bx.BotoCoreError as exc:
            raise SyncError(f"{what}: {exc}") from None

    # -- reading ------------------------------------------------------------------------------
    def list_objects(self, selection: Iterable[str]) -> dict[str, RemoteObject]:
        selection = list(selection)
        found: dict[str, RemoteObject] = {}
        for rel_prefix in _narrowest(selection):
            list_prefix = self.key(rel_prefix) if rel_prefix else (self.prefix + "/" if self.prefix else "")
            with self._errors(f"listing {self.url}"):
                for page in self._pages(list_prefix):
                    for obj in page.get("Contents", ()):
                        rel = self._rel(obj["Key"])
                        if _is_object(rel) and is_selected(rel, selection):
                            found[rel] = RemoteObject(obj["Size"], obj["ETag"])
        return found

    def _pages(self, prefix: str) -> Iterator[dict]:
        """ListObjectsV2 pages, following continuation tokens. (botocore's paginator would first load
        its pagination model, which scans every service's data directory: a noticeable part of a
        no-op sync.)"""
        request = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            page = self.client.list_objects_v2(**request)
            yield page
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            request["ContinuationToken"] = token

    def head(self, rel: str) -> Optional[ObjectInfo]:
        response = self._head(rel)
        if response is None:
            return None
        return ObjectInfo(
            response["ContentLength"], response["ETag"], response.get("Metadata", {}).get(SHA256_METADATA)
        )

    def _head(self, rel: str) -> Optional[dict]:
        import botocore.exceptions as bx

        with self._errors(f"{self.url}/{rel}"):
            try:
                return self.client.head_object(Bucket=self.bucket, Key=self.key(rel), ChecksumMode="ENABLED")
            except bx.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise

    def read_sha256(self, rel: str) -> str:
        digest = hashlib.sha256()
        with self._errors(f"reading {self.url}/{rel}"):
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(rel))["Body"]
            for chunk in body.iter_chunks(MiB):
                digest.update(chunk)
        return digest.hexdigest()

    def read_manifest(self) -> Optional[Manifest]:
        import botocore.exceptions as bx

        where = f"{self.url}/{MANIFEST_NAME}"
        with self._errors(where):
            try:
                data = self.client.get_object(Bucket=self.bucket, Key=self.key(MANIFEST_NAME))["Body"].read()
            except bx.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                    return None
                raise
        return Manifest.from_bytes(data, where)

    def download(self, rel: str, entry: FileEntry, dest: Path, on_bytes: OnBytes) -> None:
        """Stream small objects; fetch large ones as parallel ranges. `IfMatch` pins every request to
        the object the manifest recorded, so a concurrent overwrite fails instead of mixing versions."""
        condition = {"IfMatch": entry.etag} if entry.etag else {}
        with self._errors(f"downloading {self.url}/{rel}"):
            if entry.size <= self.part_size:
                body = self.client.get_object(Bucket=self.bucket, Key=self.key(rel), **condition)["Body"]
                with open(dest, "wb") as out:
                    for chunk in body.iter_chunks(MiB):
                        out.write(chunk)
                        on_bytes(len(chunk))
                return
            with open(dest, "wb") as out:
                out.truncate(entry.size)
                ranges = [
                    (start, min(start + self.part_size, entry.size)) for start in range(0, entry.size, self.part_size)
                ]
                futures = [
                    self._parts.submit(self._fetch_range, rel, out.fileno(), a, b, condition, on_bytes)
                    for a, b in ranges
                ]
                _all_results(futures)

    def _fetch_range(self, rel: str, fd: int, start: int, end: int, condition: dict, on_bytes: OnBytes) -> None:
        with self._errors(f"downloading {self.url}/{rel}"):
            response = self.client.get_object(
                Bucket=self.bucket, Key=self.key(rel), Range=f"bytes={start}-{end - 1}", **condition
            )
            data = response["Body"].read()
        if len(data) != end - start:
            raise SyncError(f"{self.url}/{rel}: short read at byte {start} ({len(data)} of {end - start})")
        os.pwrite(fd, data, start)
        on_bytes(len(data))

    # -- writing ------------------------------------------------------------------------------
    def upload(self, f: LocalFile, sha256: Optional[str], on_bytes: OnBytes) -> ObjectInfo:
        """`sha256` may be None (not hashed yet): the upload hashes the file as it reads it."""
        if f.size <= self.part_size:
            return self._put_single(f, sha256, on_bytes)
        return self._put_multipart(f, sha256, on_bytes)

    def _put_single(self, f: LocalFile, sha256: Optional[str], on_bytes: OnBytes) -> ObjectInfo:
        with open(f.path, "rb", buffering=0) as src:
            data = src.read(f.size + 1)
        if len(data) != f.size:
            raise FileChangedError(f"{f.path}: changed during the sync; re-run to upload the new version")
        check_unchanged(f)
        # The one read of the file: its SHA-256 is both the manifest's hash and the object's checksum.
        digest = hashlib.sha256(data).digest() if sha256 is None else bytes.fromhex(sha256)
        checksum = b64(digest)
        with self._errors(f"uploading {f.rel} to {self.url}"):
            response = self.client.put_object(
                Bucket=self.bucket,
                Key=self.key(f.rel),
                Body=data,
                ContentLength=len(data),
                Metadata={SHA256_METADATA: digest.hex()},
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=checksum,
            )
        on_bytes(len(data))
        return self._confirm(f, digest.hex(), checksum, response)

    def _put_multipart(self, f: LocalFile, sha256: Optional[str], on_bytes: OnBytes) -> ObjectInfo:
        if sha256 is None:
            # The metadata of a multipart upload is fixed when it starts, so the whole file is hashed first.
            sha256 = sha256_file(f.path)
            check_unchanged(f)
        part_size = part_size_for(f.size, self.part_size)
        key = self.key(f.rel)
        upload_id, stored = self._resumable_upload(f.rel, sha256, part_size)
        if upload_id is None:
            with self._errors(f"uploading {f.rel} to {self.url}"):
                upload_id = self.client.create_multipart_upload(
                    Bucket=self.bucket,
                    Key=key,
                    Metadata={SHA256_METADATA: sha256},
                    ChecksumAlgorithm="SHA256",
                )["UploadId"]
            if self.journal:
                self.journal.record(f.rel, upload_id, sha256, part_size)
        offsets = range(0, f.size, part_size)
        with open(f.path, "rb") as src:
            futures = [
                self._parts.submit(
                    self._put_part,
                    f,
                    src.fileno(),
                    upload_id,
                    n,
                    offset,
                    min(part_size, f.size - offset),
                    stored.get(n),
                    on_bytes,
                )
                for n, offset in enumerate(offsets, start=1)
            ]
            parts = _all_results(futures)
        check_unchanged(f)
        with self._errors(f"completing {f.rel} on {self.url}"):
            response = self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": [{k: p[k] for k in ("PartNumber", "ETag", "ChecksumSHA256")} for p in parts]},
            )
        if self.journal:
            self.journal.forget(f.rel)
        return self._confirm(f, sha256, composite_checksum([p["digest"] for p in parts]), response)

    def _put_part(
        self,
        f: LocalFile,
        fd: int,
        upload_id: str,
        number: int,
        offset: int,
        length: int,
        stored: Optional[dict],
        on_bytes: OnBytes,
    ) -> dict:
        data = os.pread(fd, length, offset)
        if len(data) != length:
            raise SyncError(f"{f.path}: shorter than when scanned; re-run the sync")
        digest = hashlib.sha256(data).digest()
        checksum = b64(digest)
        if stored is not None and _same_part(stored, data, checksum):
            on_bytes(length)  # already on the server from an interrupted run
            return {"PartNumber": number, "ETag": stored["ETag"], "ChecksumSHA256": checksum, "digest": digest}
        with self._errors(f"uploading {f.rel} part {number} to {self.url}"):
            response = self.client.upload_part(
                Bucket=self.bucket,
                Key=self.key(f.rel),
                UploadId=upload_id,
                PartNumber=number,
                Body=data,
                ContentLength=length,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=checksum,
            )
        on_bytes(length)
        return {"PartNumber": number, "ETag": response["ETag"], "ChecksumSHA256": checksum, "digest": digest}

    def _resumable_upload(self, rel: str, sha256: str, part_size: int) -> tuple[Optional[str], dict[int, dict]]:
        """An upload an interrupted run started for this exact content and part size, with its stored
        parts; a journaled upload for other content is aborted (its parts would only cost storage)."""
        import botocore.exceptions as bx

        if not self.journal:
            return None, {}
        entry = self.journal.get(rel)
        if entry is None:
            return None, {}
        if entry["sha256"] != sha256 or entry["part_size"] != part_size:
            self._abort(rel, entry["upload_id"])
            return None, {}
        stored: dict[int, dict] = {}
        try:
            paginator = self.client.get_paginator("list_parts")
            for page in paginator.paginate(Bucket=self.bucket, Key=self.key(rel), UploadId=entry["upload_id"]):
                for part in page.get("Parts", ()):
                    stored[part["PartNumber"]] = part
        except bx.ClientError:
            self.journal.forget(rel)  # completed, aborted or expired meanwhile: start afresh
            return None, {}
        return entry["upload_id"], stored

    def _abort(self, rel: str, upload_id: str) -> None:
        import botocore.exceptions as bx

        with contextlib.suppress(bx.ClientError, bx.BotoCoreError):
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key(rel), UploadId=upload_id)
        self.journal.forget(rel)

    def _confirm(self, f: LocalFile, sha256: str, expected_checksum: str, response: dict) -> ObjectInfo:
        """Check the server's answer to a write: the checksum it reports for the stored object must be the
        one computed from the bytes sent. A server that reports none is asked again with a HEAD."""
        reported = response.get("ChecksumSHA256")
        etag = response.get("ETag")
        if not reported or not etag:
            return self._verify(f, sha256, expected_checksum)
        _check_checksum(f"{self.url}/{f.rel}", reported, expected_checksum)
        return ObjectInfo(f.size, etag, sha256)

    def _verify(self, f: LocalFile, sha256: str, expected_checksum: str) -> ObjectInfo:
        response = self._head(f.rel)
        where = f"{self.url}/{f.rel}"
        if response is None:
            raise SyncError(f"{where}: missing right after upload")
        size = response["ContentLength"]
        if size != f.size:
            raise SyncError(f"{where}: stored size {size} differs from the file's {f.size}")
        recorded = response.get("Metadata", {}).get(SHA256_METADATA)
        if recorded != sha256:
            raise SyncError(f"{where}: stored sha256 metadata {recorded} differs from the file's {sha256}")
        checksum = response.get("ChecksumSHA256")
        if checksum:
            _check_checksum(where, checksum, expected_checksum)
        return ObjectInfo(size, response["ETag"], recorded)

    def delete(self, rels: list[str]) -> None:
        for start in range(0, len(rels), 1000):  # DeleteObjects takes at most 1,000 keys
            batch = [{"Key": self.key(rel)} for rel in rels[start : start + 1000]]
            with self._errors(f"deleting from {self.url}"):
                response = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            if response.get("Errors"):
                first = response["Errors"][0]
                raise SyncError(f"{self.url}: could not delete {first.get('Key')} ({first.get('Code')})")

    def write_manifest(self, manifest: Manifest) -> None:
        data = manifest.to_bytes()
        with self._errors(f"writing {self.url}/{MANIFEST_NAME}"):
            self.client.put_object(
                Bucket=self.bucket,
                Key=self.key(MANIFEST_NAME),
                Body=data,
                ContentType="application/json",
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=b64(hashlib.sha256(data).digest()),
            )

    def close(self) -> None:
        self._parts.shutdown(wait=True, cancel_futures=True)


def _all_results(futures: list) -> list:
    """Wait for every future before raising the first error: the parts share a file descriptor that
    the caller closes as soon as this returns."""
    wait(futures)
    return [future.result() for future in futures]


def _check_checksum(where: str, reported: str, expected: str) -> None:
    # Composite checksums read "<base64>-<parts>" on S3; some compatible servers drop the suffix.
    if reported.split("-")[0] != expected.split("-")[0]:
        raise SyncError(f"{where}: server checksum {reported} differs from the expected {expected}")


def _same_part(stored: dict, data: bytes, checksum: str) -> bool:
    """A stored part is reused only if it holds exactly these bytes: by its SHA-256 checksum when the
    server reports one, else by its ETag (the MD5 of the part on S3-compatible stores)."""
    if stored.get("Size") != len(data):
        return False
    if stored.get("ChecksumSHA256"):
        return stored["ChecksumSHA256"] == checksum
    return stored.get("ETag", "").strip('"') == hashlib.md5(data).hexdigest()


def _is_object(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return bool(name) and name != MANIFEST_NAME and not name.endswith(PARTIAL_SUFFIX)


def _narrowest(selection: list[str]) -> list[str]:
    """List once per selected prefix, or once for everything when the whole root is selected."""
    return [""] if "" in selection else sorted(set(selection))


def _make_client(endpoint_url, credential_refresher, initial_credentials, region, path_style, verify_tls, jobs):
    """A thread-safe S3 client. Credentials come from boto3's usual chain (env, profile, instance role)
    unless `credential_refresher` supplies short-lived ones, which botocore renews before they expire."""
    try:
        import boto3
        from botocore.config import Config
        from botocore.credentials import RefreshableCredentials
        from botocore.session import Session as BotocoreSession
    except ImportError:
        raise SyncError("S3 destinations need boto3: pip install 'weighted-mtp[s3]'") from None
    core = BotocoreSession()
    # Timestamps (LastModified of every listed object, ...) stay strings: nothing here reads them, and
    # parsing them is most of the client's work in listing a large prefix.
    core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=_unparsed_timestamp)
    if credential_refresher is not None:
        # botocore has no public setter for refreshable credentials; the VESSL SDK sets this attribute too.
        core._credentials = RefreshableCredentials.create_from_metadata(
            metadata=initial_credentials or credential_refresher(),
            refresh_using=credential_refresher,
            method="vessl-federation",
        )
    session = boto3.session.Session(botocore_session=core)
    config = Config(
        max_pool_connections=2 * jobs + 4,
        retries={"max_attempts": 5, "mode": "standard"},
        connect_timeout=30,
        read_timeout=120,
        # We attach SHA-256 checksums ourselves and hash downloads against the manifest, so botocore's
        # default CRC32 on every request and response would only be a second pass over the same bytes.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path" if path_style else "auto"},
    )
    client = session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config, verify=verify_tls)
    _sign_with_checksum_payload(client)
    return client


def _unparsed_timestamp(value):
    return value


# -- signing without hashing every body twice ---------------------------------------------------
CHECKSUM_PAYLOAD_SIGNER = "wmtp-s3v4-checksum-payload"
_UPLOAD_OPERATIONS = ("PutObject", "UploadPart")


def _checksum_payload_signer():
    """botocore's S3 SigV4 signer, except that the payload hash of a request that carries an
    `x-amz-checksum-sha256` header is that header's digest (hex instead of base64) rather than a second
    SHA-256 pass over the body. Both name the SHA-256 of the same body, and S3 validates both, so a body
    that does not match is refused exactly as before; only the client's CPU is spared."""
    from botocore.auth import S3SigV4Auth

    class ChecksumPayloadS3SigV4Auth(S3SigV4Auth):
        def payload(self, request):
            checksum = request.headers.get("x-amz-checksum-sha256")
            streaming = getattr(self, "_is_streaming_checksum_payload", lambda _: False)(request)
            if checksum and not streaming and self._should_sha256_sign_payload(request):
                try:
                    digest = base64.b64decode(checksum, validate=True)
                except (binascii.Error, ValueError):
                    digest = b""
                if len(digest) == 32:
                    return digest.hex()
            return super().payload(request)

    return ChecksumPayloadS3SigV4Auth


def _sign_with_checksum_payload(client) -> None:
    """Use the checksum-payload signer for uploads where botocore would pick its plain `s3v4` signer
    (the pure-Python one); with anything else (awscrt, SigV4a, S3 Express) botocore signs as usual."""
    try:
        import botocore.auth
        import botocore.handlers
    except ImportError:  # pragma: no cover - botocore comes with boto3
        return
    if botocore.auth.AUTH_TYPE_MAPS.get("s3v4") is not botocore.auth.S3SigV4Auth:
        return
    choose = getattr(botocore.handlers, "set_operation_specific_signer", None)
    if choose is None:
        return
    if CHECKSUM_PAYLOAD_SIGNER not in botocore.auth.AUTH_TYPE_MAPS:
        botocore.auth.AUTH_TYPE_MAPS[CHECKSUM_PAYLOAD_SIGNER] = _checksum_payload_signer()

    def choose_signer(context, signing_name, **kwargs):
        try:
            chosen = choose(context=context, signing_name=signing_name, **kwargs)
        except Exception:  # an internal that moved: let botocore decide as it always does
            return None
        return CHECKSUM_PAYLOAD_SIGNER if chosen == "s3v4" else None

    for operation in _UPLOAD_OPERATIONS:
        client.meta.events.register_first(f"choose-signer.s3.{operation}", choose_signer)


class UploadJournal:
    """Multipart uploads in flight, per destination: `{rel: {upload_id, sha256, part_size}}` in a
    JSON file in the cache directory, rewritten atomically whenever an upload starts or completes."""

    def __init__(self, directory: Path, url: str):
        key = hashlib.sha256(url.encode()).hexdigest()[:24]
        self.path = directory / "sync-uploads" / f"{key}.json"
        self._lock = threading.Lock()
        try:
            self.entries: dict[str, dict] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}

    def get(self, rel: str) -> Optional[dict]:
        with self._lock:
            return self.entries.get(rel)

    def record(self, rel: str, upload_id: str, sha256: str, part_size: int) -> None:
        with self._lock:
            self.entries[rel] = {"upload_id": upload_id, "sha256": sha256, "part_size": part_size}
            self._save()

    def forget(self, rel: str) -> None:
        with self._lock:
            if self.entries.pop(rel, None) is not None:
                self._save()

    def _save(self) -> None:
        with atomic_output(self.path, "w") as out:
            json.dump(self.entries, out)
