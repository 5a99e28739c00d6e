"""Shared fixtures: the Meta conformance checkpoint and the micro model, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["tests.s3_server"]  # the moto S3 server fixtures: s3, bucket, moto_endpoint, s3_env

# Set before torch is imported (OpenMP reads them once, at load), here and in every subprocess a test
# starts; a test that wants more threads says so in its subprocess's env (test_pinned_losses: 2).
# The suite runs several busy processes at once on a 2-core machine (pytest-xdist workers, torchrun
# ranks, servers). The micro model's ops are too small to share out between threads; shared anyway,
# each op waits for a partner thread that another process holds off the core, and a thread that
# spins while it waits takes the very core its partner needs: under `-n 2` the micro-model runs took
# up to 10x longer (one hit its 600 s timeout). One thread each, and waiting threads that sleep rather
# than spin. What a test computes and asserts is unchanged.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

FIXTURES = Path(__file__).parent / "fixtures"
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def meta_tiny_dir() -> Path:
    return FIXTURES / "meta_mtp_tiny"


@pytest.fixture(scope="session")
def micro_models(tmp_path_factory) -> dict[str, Path]:
    """`{"micro-mtp": dir, "micro-ref": dir}` standard model directories (random init, seed 0)."""
    from wmtp.data.humaneval import humaneval_code_texts
    from wmtp.model.micro import build_micro_models

    return build_micro_models(tmp_path_factory.mktemp("models_v2"), humaneval_code_texts(), seed=0)


@pytest.fixture(scope="module")
def one_torch_thread():
    """The micro model's matmuls are too small to share out; extra threads only fight over a busy CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_tracking_env(monkeypatch):
    """No MLflow server or run from the developer's shell leaks into a test."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No credential of the developer's shell or kubeconfig takes part (secret checks scan them all)."""
    import os
    import re

    for name in list(os.environ):
        if re.search(r"_TOKEN$|_PASSWORD$|_KEY$|SECRET", name, re.IGNORECASE):
            monkeypatch.delenv(name)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
