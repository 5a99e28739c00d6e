"""Package layout that pyproject.toml alone cannot express.

jobs/ and the templates live at the top of the checkout (the design's layout) and ship as the
`wmtp_assets.*` package data, so an installed wheel renders exactly what a checkout renders.
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
# jobs/ and every top-level folder holding a job template (*.j2): a new target's template folder ships
# without an edit here.
ASSET_DIRS = {
    f"wmtp_assets.{name}": name for name in ["jobs", *sorted({path.parent.name for path in HERE.glob("*/*.j2")})]
}
# The cli/ and storage_sync/ folders install as `wmtp_cli` and `wmtp_storage_sync`: generic names such as
# `cli` would collide with a user's own package (a working directory holding a cli/ folder would
# hijack `python -m cli.main`, which `wmtp submit --target local` runs).
CODE_DIRS = {"wmtp_cli": "cli", "wmtp_storage_sync": "storage_sync"}


def renamed(prefix: str, folder: str) -> list[str]:
    """Packages under `folder` named from `prefix` (cli/platform → wmtp_cli.platform)."""
    return [prefix, *(f"{prefix}.{sub}" for sub in find_packages(where=folder))]


setup(
    packages=find_packages(include=["wmtp", "wmtp.*"])
    + [name for prefix, folder in CODE_DIRS.items() for name in renamed(prefix, folder)]
    + list(ASSET_DIRS),
    package_dir=CODE_DIRS | ASSET_DIRS,
    package_data={name: ["*.yaml", "*/*.yaml", "*.j2", "Dockerfile", "*.env.example"] for name in ASSET_DIRS},
)
