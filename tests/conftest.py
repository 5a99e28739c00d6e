"""Shared fixtures: the Meta conformance checkpoint and the micro model, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def meta_tiny_dir() -> Path:
    return FIXTURES / "meta_mtp_tiny"


@pytest.fixture(scope="session")
def micro_models(tmp_path_factory) -> dict[str, Path]:
    """`{"micro-mtp": dir, "micro-ref": dir}` standard model directories (random init, seed 0)."""
    from wmtp.model.micro import build_micro_models

    return build_micro_models(tmp_path_factory.mktemp("models_v2"), seed=0)


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
