"""Package layout that pyproject.toml alone cannot express.

jobs/ and the templates live at the top of the checkout (the design's layout) and ship as the
`wmtp_assets.*` package data, so an installed wheel renders exactly what a checkout renders.
"""

from setuptools import find_packages, setup

ASSET_DIRS = {"wmtp_assets.jobs": "jobs", "wmtp_assets.vessl": "vessl", "wmtp_assets.k8s": "k8s", "wmtp_assets.docker": "docker"}

setup(
    packages=find_packages(include=["wmtp", "wmtp.*", "cli", "cli.*", "storage_sync", "storage_sync.*"])
    + list(ASSET_DIRS),
    package_dir=ASSET_DIRS,
    package_data={name: ["*.yaml", "*/*.yaml", "*.j2", "Dockerfile", "*.env.example"] for name in ASSET_DIRS},
)
