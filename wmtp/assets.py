"""Locate the shipped asset folders (jobs/, vessl/, k8s/, docker/) in a checkout or an installed wheel."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

ASSET_NAMES = ("jobs", "vessl", "k8s", "docker")
CHECKOUT_ROOT = Path(__file__).resolve().parents[1]


def asset_dir(name: str) -> Path:
    """The folder `name` from the checkout when running from one, else from the installed package data."""
    if name not in ASSET_NAMES:
        raise ValueError(f"unknown asset folder {name!r}; expected one of {ASSET_NAMES}")
    in_checkout = CHECKOUT_ROOT / name
    if (CHECKOUT_ROOT / "pyproject.toml").is_file() and in_checkout.is_dir():
        return in_checkout
    return Path(str(resources.files(f"wmtp_assets.{name}")))
