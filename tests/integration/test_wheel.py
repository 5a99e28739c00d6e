"""The built wheel carries jobs/ and the templates (wmtp_assets.*) and, imported from the unpacked
wheel with the working directory outside any checkout, renders exactly what the checkout renders."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from wmtp_cli.platform.jobs import prepare_job

REPO_ROOT = Path(__file__).resolve().parents[2]
NOT_SOURCES = shutil.ignore_patterns(
    ".git",
    ".venv",
    "storage",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    "tests",
    "bench",
    "runs",
    "mlruns",
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def unpacked_wheel(tmp_path_factory) -> Path:
    """`pip wheel` of a copy of the checkout (without build isolation when possible: no network), unzipped."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(REPO_ROOT, source, ignore=NOT_SOURCES)
    isolation = ["--no-build-isolation"] if can_build_here() else []  # else pip fetches setuptools from PyPI
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            *isolation,
            "--quiet",
            "-w",
            str(work / "dist"),
            str(source),
        ],
        check=True,
        timeout=120,
    )
    (wheel,) = (work / "dist").glob("weighted_mtp-*.whl")
    unpacked = work / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(unpacked)
    return unpacked


def can_build_here() -> bool:
    """This environment's setuptools builds wheels by itself (bdist_wheel is built in from 70.1 on)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        major, minor = (int(part) for part in version("setuptools").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (70, 1)


def run_from_wheel(unpacked: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "PYTHONPATH": str(unpacked), "NO_COLOR": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_wheel_ships_every_asset_folder(unpacked_wheel):
    assets = unpacked_wheel / "wmtp_assets"
    for path in (
        "jobs/defaults.yaml",
        "jobs/smoke.yaml",
        "jobs/stages/baseline.yaml",
        "jobs/presets/local-light.yaml",
        "vessl/run.yaml.j2",
        "k8s/pytorchjob.yaml.j2",
        "docker/compose.yaml.j2",
        "docker/Dockerfile",
    ):
        assert (assets / path).is_file(), path
    shipped = sorted(p.relative_to(assets / "jobs").as_posix() for p in (assets / "jobs").rglob("*.yaml"))
    in_checkout = sorted(p.relative_to(REPO_ROOT / "jobs").as_posix() for p in (REPO_ROOT / "jobs").rglob("*.yaml"))
    assert shipped == in_checkout


def test_wheel_installs_only_wmtp_prefixed_import_names(unpacked_wheel):
    """Generic top-level names (cli, storage_sync) would collide with a user's own packages."""
    top = sorted(p.name for p in unpacked_wheel.iterdir() if p.is_dir() and not p.name.endswith(".dist-info"))
    assert top == ["wmtp", "wmtp_assets", "wmtp_cli", "wmtp_storage_sync"]
    assert (unpacked_wheel / "wmtp_cli" / "platform" / "plugins" / "vessl.py").is_file()
    assert (unpacked_wheel / "wmtp_storage_sync" / "engine.py").is_file()


def test_wheel_has_every_registered_target_and_its_template(unpacked_wheel, tmp_path):
    """The registry finds its plugin modules, and their templates, inside the installed wheel too."""
    script = (
        "from wmtp.assets import asset_dir; from wmtp_cli.platform.registry import targets\n"
        "for t in targets().values():\n"
        "    folder, _, file = (t.template or '/').partition('/')\n"
        "    print(t.name, t.template and (asset_dir(folder) / file).is_file())"
    )
    result = run_from_wheel(unpacked_wheel, tmp_path, "-c", script)
    assert result.returncode == 0, result.stderr
    from wmtp_cli.platform.registry import targets

    expected = [f"{t.name} {True if t.template else None}" for t in targets().values()]
    assert result.stdout.splitlines() == expected


def test_asset_dir_resolves_inside_the_installed_wheel(unpacked_wheel, tmp_path):
    script = (
        "import wmtp, wmtp_cli.platform; from wmtp.assets import asset_dir; "
        "print(wmtp.__file__); [print(asset_dir(n)) for n in ('jobs', 'vessl', 'k8s', 'docker')]"
    )
    result = run_from_wheel(unpacked_wheel, tmp_path, "-c", script)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == str(unpacked_wheel / "wmtp" / "__init__.py")
    assert lines[1:] == [str(unpacked_wheel / "wmtp_assets" / name) for name in ("jobs", "vessl", "k8s", "docker")]


@pytest.mark.parametrize("target", ["k8s", "vessl"])
def test_wheel_renders_the_same_manifest_as_the_checkout(unpacked_wheel, tmp_path, target):
    out = tmp_path / "x.yaml"
    result = run_from_wheel(
        unpacked_wheel,
        tmp_path,
        "-m",
        "wmtp_cli.main",
        "render",
        "smoke",
        "--target",
        target,
        "-o",
        str(out),
        "--name",
        "wmtp-wheel",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wrote {out} ({target} job wmtp-wheel)\n"
    assert out.read_text() == prepare_job("smoke", target, name="wmtp-wheel").manifest


def test_wheel_validates_compose_and_resolves_experiments(unpacked_wheel, tmp_path):
    compose = run_from_wheel(
        unpacked_wheel,
        tmp_path,
        "-m",
        "wmtp_cli.main",
        "submit",
        "smoke",
        "--target",
        "local-docker",
        "--dry-run",
        "--name",
        "wmtp-wheel",
    )
    assert compose.returncode == 0, compose.stderr
    assert f'"{tmp_path}/storage"' in compose.stdout  # the bind mount is relative to the cwd, not the checkout
    trainer = run_from_wheel(unpacked_wheel, tmp_path, "-m", "wmtp.train", "smoke", "--dry-run")
    assert trainer.returncode == 0, trainer.stderr
    assert trainer.stdout.startswith("# stage: critic")


def test_wheel_runs_an_edited_copy_from_the_working_directory(unpacked_wheel, tmp_path):
    """Installed elsewhere, `wmtp jobs cp` + an edit of ./jobs/smoke.yaml is what `wmtp train smoke` and the
    trainer module (what torchrun runs, in the same working directory) resolve."""
    copied = run_from_wheel(unpacked_wheel, tmp_path, "-m", "wmtp_cli.main", "jobs", "cp", "smoke")
    assert copied.returncode == 0, copied.stderr
    spec = tmp_path / "jobs" / "smoke.yaml"
    assert spec.read_text() == (unpacked_wheel / "wmtp_assets" / "jobs" / "smoke.yaml").read_text()
    spec.write_text(spec.read_text().replace("max_steps: 12", "max_steps: 7"))
    listing = run_from_wheel(unpacked_wheel, tmp_path, "-m", "wmtp_cli.main", "jobs", "ls")
    assert "./jobs   shadows the shipped one; shipped defaults and stages" in listing.stdout, listing.stderr
    for command in (["wmtp_cli.main", "train"], ["wmtp.train"]):
        result = run_from_wheel(unpacked_wheel, tmp_path, "-m", *command, "smoke", "--dry-run")
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("max_steps: 7") == 4 and "max_steps: 12" not in result.stdout
