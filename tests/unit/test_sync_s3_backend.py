"""S3 backend pieces that need no server: listing pagination and the checksum-payload signer."""

import base64
import hashlib

import pytest

from wmtp_storage_sync.backends.base import RemoteObject
from wmtp_storage_sync.backends.s3 import S3Backend, _checksum_payload_signer


@pytest.fixture
def backend(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    b = S3Backend("bucket", "team", endpoint_url="http://127.0.0.1:9", region="us-east-1", jobs=1)
    yield b
    b.close()


def test_listing_follows_continuation_tokens_and_skips_the_manifest(backend, monkeypatch):
    pages = {
        None: {
            "IsTruncated": True,
            "NextContinuationToken": "t1",
            "Contents": [{"Key": "team/a.bin", "Size": 1, "ETag": '"e1"'}],
        },
        "t1": {
            "IsTruncated": True,
            "NextContinuationToken": "t2",
            "Contents": [{"Key": "team/.wmtp-manifest.json", "Size": 9, "ETag": '"m"'}],
        },
        "t2": {
            "IsTruncated": False,
            "KeyCount": 1,
            "Contents": [{"Key": "team/d/b.bin", "Size": 2, "ETag": '"e2"', "LastModified": "2025-01-01T00:00:00Z"}],
        },
    }
    calls = []

    def list_objects_v2(**request):
        calls.append(dict(request))
        return pages[request.get("ContinuationToken")]

    monkeypatch.setattr(backend.client, "list_objects_v2", list_objects_v2)
    assert backend.list_objects([""]) == {"a.bin": RemoteObject(1, '"e1"'), "d/b.bin": RemoteObject(2, '"e2"')}
    assert [c.get("ContinuationToken") for c in calls] == [None, "t1", "t2"]
    assert {c["Prefix"] for c in calls} == {"team/"} and {c["Bucket"] for c in calls} == {"bucket"}


class _Request:
    def __init__(self, body: bytes, headers: dict):
        self.body, self.headers, self.method = body, headers, "PUT"
        self.url = "http://127.0.0.1:9/bucket/team/a.bin"
        self.context = {}


def test_signer_takes_the_payload_hash_from_a_valid_checksum_header_only():
    signer = _checksum_payload_signer()(None, "s3", "us-east-1")
    body = b"some bytes"
    digest = hashlib.sha256(body).digest()
    good = _Request(body, {"x-amz-checksum-sha256": base64.b64encode(digest).decode()})
    assert signer.payload(good) == digest.hex()
    # No header, or one that is not a SHA-256 digest: botocore hashes the body as it always does.
    assert signer.payload(_Request(body, {})) == digest.hex()
    assert signer.payload(_Request(body, {"x-amz-checksum-sha256": "not base64!"})) == digest.hex()
    assert (
        signer.payload(_Request(body, {"x-amz-checksum-sha256": base64.b64encode(b"short").decode()})) == digest.hex()
    )
