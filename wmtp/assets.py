"""Locate the shipped asset folders (jobs/, vessl/, k8s/, docker/: jobs/ and each target's template folder)
in a checkout or an installed wheel."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

# A top-level folder of the checkout; setup.py ships jobs/ and every folder holding a template (*.j2).
ASSET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
CHECKOUT_ROOT = Path(__file__).resolve().parents[1]  # in an installed wheel: site-packages


def asset_dir(name: str) -> Path:
    """The folder `name` from the checkout when running from one, else from the installed package data.

    Installed, the folders are the `wmtp_assets.<name>` namespace packages; the copy installed beside
    this `wmtp` package wins, so code and templates always come from the same install (a namespace
    path can also hold another install's folders, e.g. an editable checkout's).
    """
    if not ASSET_NAME.fullmatch(name):
        raise ValueError(f"asset folder {name!r}: expected a folder name (letters, digits, '_', '-')")
    in_checkout = CHECKOUT_ROOT / name
    if (CHECKOUT_ROOT / "pyproject.toml").is_file() and in_checkout.is_dir():
        return in_checkout
    beside = CHECKOUT_ROOT / "wmtp_assets" / name
    if beside.is_dir():
        return beside
    spec = importlib.util.find_spec(f"wmtp_assets.{name}")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if Path(location).is_dir():
            return Path(location)
    raise FileNotFoundError(f"asset folder {name!r} not found: neither a checkout nor an installed wmtp_assets.{name}")
