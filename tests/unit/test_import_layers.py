"""The import contracts (pyproject.toml's [tool.importlinter], docs/architecture.md "Layers"), which
scripts/lint.sh checks in CI: every declared contract is checked and kept, and every one of them breaks on a
copy of the code given one wrong import inside a function, where an import hides best."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = REPO_ROOT / "pyproject.toml"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
# Installed package → checkout folder (setup.py's CODE_DIRS).
PACKAGES = {"wmtp": "wmtp", "wmtp_cli": "cli", "wmtp_storage_sync": "storage_sync"}
# One wrong import per contract, each inside a function: file of the copy → the imported module.
WRONG_IMPORTS = {
    "wmtp/common/files.py": "wmtp_cli.secrets",  # the trainer importing the platform
    "wmtp_storage_sync/errors.py": "wmtp_cli.secrets",  # storage sync importing the CLI
    "wmtp_cli/platform/names.py": "wmtp_cli.train",  # the platform importing a command module
    "wmtp/model/checkpoint.py": "wmtp.train.runner",  # model above train, and a model <-> train cycle
}


def contract_names() -> list[str]:
    with PYPROJECT.open("rb") as file:
        return [contract["name"] for contract in tomllib.load(file)["tool"]["importlinter"]["contracts"]]


def lint_imports(packages_dir: Path) -> str:
    """lint-imports with the checkout's contracts over the packages found in `packages_dir` first; its
    output with line wrapping undone."""
    path = os.pathsep.join(filter(None, [str(packages_dir), os.environ.get("PYTHONPATH")]))
    result = subprocess.run(
        [LINT_IMPORTS, "--config", PYPROJECT, "--no-cache", "--no-logo"],
        cwd=packages_dir,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == (0 if " 0 broken." in output else 1), output
    return output


def copy_with_wrong_imports(dest: Path) -> None:
    for package, folder in PACKAGES.items():
        shutil.copytree(REPO_ROOT / folder, dest / package, ignore=shutil.ignore_patterns("__pycache__"))
    for file, module in WRONG_IMPORTS.items():
        with (dest / file).open("a") as source:
            source.write(f"\n\ndef _wrong_import():\n    import {module}  # noqa: F401\n")


def test_every_contract_is_checked_and_kept():
    names = contract_names()
    assert len(names) >= 5
    output = lint_imports(REPO_ROOT)
    assert f"Contracts: {len(names)} kept, 0 broken." in output
    for name in names:
        assert f"{' '.join(name.split())} KEPT" in output


def test_an_import_inside_a_function_breaks_every_contract(tmp_path):
    copy_with_wrong_imports(tmp_path)
    output = lint_imports(tmp_path)
    assert f"Contracts: 0 kept, {len(contract_names())} broken." in output
    assert "wmtp.model.checkpoint -> wmtp.train.runner" in output
    assert "wmtp_cli.platform.names -> wmtp_cli.train" in output
