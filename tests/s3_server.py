"""A real S3-protocol server for the sync tests: moto's ThreadedMotoServer on 127.0.0.1, one per test
module, a fresh versioned bucket per test. A pytest plugin (tests/conftest.py's `pytest_plugins`), so
every test module that takes `s3`, `bucket`, `moto_endpoint` or `s3_env` gets them."""

from __future__ import annotations

import hashlib
import socket
import uuid
from pathlib import Path

import pytest

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def moto_endpoint():
    """One moto S3 server per test module; each test gets its own bucket."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_env(tmp_path, monkeypatch):
    """Test credentials and a private hash cache; no shared ~/.aws or instance metadata lookups."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("WMTP_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture
def s3(moto_endpoint, s3_env):
    import boto3

    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")


@pytest.fixture
def bucket(s3):
    name = f"wmtp-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


def make_tree(root: Path, files: dict[str, int], seed: int = 0) -> Path:
    """Files of the given sizes with deterministic pseudo-random content."""
    for i, (rel, size) in enumerate(files.items()):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        block = hashlib.sha256(f"{seed}:{i}".encode()).digest() * (size // 32 + 1)
        path.write_bytes(block[:size])
    return root
