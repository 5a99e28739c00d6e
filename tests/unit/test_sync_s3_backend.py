"""S3 backend pieces that need no server: the checksum-payload signer."""

import base64
import hashlib

from storage_sync.backends.s3 import _checksum_payload_signer


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
    assert signer.payload(_Request(body, {"x-amz-checksum-sha256": base64.b64encode(b"short").decode()})) == digest.hex()
