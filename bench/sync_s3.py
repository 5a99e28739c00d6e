"""`wmtp sync-storage` vs `aws s3 sync` against the same S3-protocol server, in the same run.

Cases (both tools run as the user would run them: a fresh CLI process each time, default settings):
  upload   ~1 GiB in ~200 files of mixed sizes into an empty prefix (wmtp starts with no hash cache);
  no-op    re-sync of the same tree (nothing changed);
  no-op    re-sync of 10,000 small files (after an untimed first sync).
The server is moto's ThreadedMotoServer on 127.0.0.1 (in this process); awscli is installed into a
throwaway virtualenv (`/tmp/wmtp-bench-aws`) when no `aws` is given. Prints a ratio table
(wmtp time / aws time; below 1.0 means wmtp is faster) and writes `results.json` in the work dir.

    .venv/bin/python bench/sync_s3.py                      # defaults: 1 GiB / 200 files, 10,000 small files
    .venv/bin/python bench/sync_s3.py --size-mib 256 --files 50 --small-files 2000 --repeats 1   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
AWS_VENV = Path("/tmp/wmtp-bench-aws")
MiB = 1024 * 1024


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/wmtp-bench-sync"))
    parser.add_argument("--size-mib", type=int, default=1024, help="total size of the large tree")
    parser.add_argument("--files", type=int, default=200, help="files in the large tree")
    parser.add_argument("--small-files", type=int, default=10_000, help="files in the small tree")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per tool and case (median reported)")
    parser.add_argument("--aws", type=Path, default=None, help="an aws CLI to use instead of installing one")
    return parser.parse_args()


def ensure_aws(given: Path | None) -> Path:
    """The aws CLI: as given, else from the throwaway virtualenv, created on first use."""
    if given:
        return given
    aws = AWS_VENV / "bin" / "aws"
    if not aws.exists():
        print(f"installing awscli into {AWS_VENV} (throwaway) …", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(AWS_VENV)], check=True)
        subprocess.run([str(AWS_VENV / "bin" / "pip"), "install", "--quiet", "awscli"], check=True)
    return aws


def aws_version(aws: Path) -> str:
    out = subprocess.run([str(aws), "--version"], capture_output=True, text=True)
    return (out.stdout or out.stderr).strip()


def file_sizes(total: int, count: int, rng: random.Random) -> list[int]:
    """Log-uniform sizes (a few large shards, many small files) scaled to `total` bytes."""
    raw = [2 ** rng.uniform(0, 8) for _ in range(count)]
    scale = total / sum(raw)
    sizes = [max(1, int(r * scale)) for r in raw]
    sizes[0] += total - sum(sizes)
    return sizes


def build_tree(root: Path, sizes: list[int], label: str) -> Path:
    """Random content, written once and reused across runs (a marker records what was built)."""
    marker = root / ".bench-tree"
    spec = json.dumps(sizes)
    if marker.exists() and marker.read_text() == spec:
        return root
    shutil.rmtree(root, ignore_errors=True)
    print(f"writing {label} ({len(sizes)} files, {sum(sizes) / MiB:.0f} MiB) …", flush=True)
    for i, size in enumerate(sizes):
        path = root / f"dir{i % 16:02d}" / f"file{i:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as out:
            left = size
            while left:
                chunk = min(left, 8 * MiB)
                out.write(os.urandom(chunk))
                left -= chunk
    marker.write_text(spec)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tool_env(workdir: Path) -> dict:
    return {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(workdir / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(workdir / "no-aws-creds"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "WMTP_CACHE_DIR": str(workdir / "wmtp-cache"),
        "PYTHONPATH": str(REPO_ROOT),
    }


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{command[0]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return elapsed


def wmtp_sync(root: Path, url: str, endpoint: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "wmtp_cli.main",
        "sync-storage",
        "--root",
        str(root),
        "--dest",
        url,
        "--endpoint-url",
        endpoint,
        "--no-progress",
    ]


def aws_sync(aws: Path, root: Path, url: str, endpoint: str) -> list[str]:
    return [
        str(aws),
        "s3",
        "sync",
        str(root),
        url,
        "--endpoint-url",
        endpoint,
        "--only-show-errors",
        "--exclude",
        ".bench-tree",
    ]


class Bench:
    def __init__(self, args: argparse.Namespace, aws: Path, endpoint: str):
        import boto3

        self.args, self.aws, self.endpoint = args, aws, endpoint
        self.env = tool_env(args.workdir)
        self.s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )
        self.buckets = 0

    def fresh_bucket(self) -> str:
        self.buckets += 1
        name = f"bench-{self.buckets:03d}"
        self.s3.create_bucket(Bucket=name)
        return name

    def empty(self, bucket: str) -> None:
        """Free the server's memory/disk between runs."""
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", ())]
            if keys:
                self.s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})

    def upload_case(self, root: Path) -> tuple[list[float], list[float], list[float], list[float]]:
        """Cold uploads into empty buckets, alternating tools; then no-op re-syncs of what was uploaded."""
        ours, theirs, ours_noop, theirs_noop = [], [], [], []
        for _ in range(self.args.repeats):
            shutil.rmtree(self.args.workdir / "wmtp-cache", ignore_errors=True)  # no hash cache: hash everything
            bucket = self.fresh_bucket()
            ours.append(timed(wmtp_sync(root, f"s3://{bucket}/tree", self.endpoint), self.env))
            ours_noop.append(timed(wmtp_sync(root, f"s3://{bucket}/tree", self.endpoint), self.env))
            self.empty(bucket)
            bucket = self.fresh_bucket()
            theirs.append(timed(aws_sync(self.aws, root, f"s3://{bucket}/tree", self.endpoint), self.env))
            theirs_noop.append(timed(aws_sync(self.aws, root, f"s3://{bucket}/tree", self.endpoint), self.env))
            self.empty(bucket)
        return ours, theirs, ours_noop, theirs_noop

    def noop_case(self, root: Path) -> tuple[list[float], list[float]]:
        ours_bucket, aws_bucket = self.fresh_bucket(), self.fresh_bucket()
        timed(wmtp_sync(root, f"s3://{ours_bucket}/small", self.endpoint), self.env)  # untimed first syncs
        timed(aws_sync(self.aws, root, f"s3://{aws_bucket}/small", self.endpoint), self.env)
        ours, theirs = [], []
        for _ in range(max(self.args.repeats, 3)):
            ours.append(timed(wmtp_sync(root, f"s3://{ours_bucket}/small", self.endpoint), self.env))
            theirs.append(timed(aws_sync(self.aws, root, f"s3://{aws_bucket}/small", self.endpoint), self.env))
        return ours, theirs


def main() -> None:
    args = parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    aws = ensure_aws(args.aws)
    rng = random.Random(0)
    large = build_tree(args.workdir / "large", file_sizes(args.size_mib * MiB, args.files, rng), "the large tree")
    small = build_tree(args.workdir / "small", [1024] * args.small_files, "the small-file tree")

    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        bench = Bench(args, aws, f"http://127.0.0.1:{port}")
        print("timing uploads …", flush=True)
        up_ours, up_aws, noop_large_ours, noop_large_aws = bench.upload_case(large)
        print("timing no-op re-syncs of small files …", flush=True)
        noop_ours, noop_aws = bench.noop_case(small)
    finally:
        server.stop()

    size_label = (
        f"{args.size_mib / 1024:.2f} GiB / {args.files} files"
        if args.size_mib >= 1024
        else f"{args.size_mib} MiB / {args.files} files"
    )
    rows = [
        (f"upload {size_label} (cold)", up_ours, up_aws),
        (f"no-op re-sync {size_label}", noop_large_ours, noop_large_aws),
        (f"no-op re-sync {args.small_files:,} small files", noop_ours, noop_aws),
    ]
    print(
        f"\nserver: moto ThreadedMotoServer (127.0.0.1); {aws_version(aws)}; {os.cpu_count()} CPUs; "
        f"median of {args.repeats}+ runs, seconds per CLI invocation"
    )
    print(f"{'case':<44} {'wmtp':>8} {'aws s3 sync':>12} {'ratio':>8}")
    results = []
    for label, ours, theirs in rows:
        a, b = statistics.median(ours), statistics.median(theirs)
        print(f"{label:<44} {a:>8.2f} {b:>12.2f} {a / b:>7.2f}×")
        results.append({"case": label, "wmtp_s": ours, "aws_s": theirs, "ratio": a / b})
    (args.workdir / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
