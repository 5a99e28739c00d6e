"""Real servers for tests: moto's S3 server and `mlflow server`, on 127.0.0.1 with free ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except Exception:
            time.sleep(0.2)
    raise TimeoutError(url)


@contextmanager
def moto_s3(bucket: str):
    """A real S3-protocol server (moto) with one bucket; yields its endpoint URL."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            **{k.lower(): v for k, v in S3_CREDENTIALS.items() if k != "AWS_DEFAULT_REGION"},
            region_name="us-east-1",
        ).create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        server.stop()


class MlflowServer:
    def __init__(self, proc: subprocess.Popen, uri: str):
        self.proc, self.uri = proc, uri

    def kill(self) -> None:
        """Kill the whole server process group (workers included)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def start_mlflow_server(root: Path, s3_endpoint: str, bucket: str, port: int) -> MlflowServer:
    """`mlflow server` on `port` with a sqlite backend under `root` and artifacts proxied to the S3
    server; started again on the same port and root, it serves the same store (an outage and recovery)."""
    env = {**os.environ, **S3_CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint}
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        f"s3://{bucket}/mlflow",
        "--workers",
        "1",
    ]
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    server = MlflowServer(proc, f"http://127.0.0.1:{port}")
    try:
        wait_http(f"{server.uri}/health", timeout=120, proc=proc)
    except BaseException:
        server.kill()
        raise
    return server


@contextmanager
def mlflow_server(root: Path, s3_endpoint: str, bucket: str):
    """A started `mlflow server` on a free port, killed on exit."""
    server = start_mlflow_server(root, s3_endpoint, bucket, free_port())
    try:
        yield server
    finally:
        server.kill()
