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
