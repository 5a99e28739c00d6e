""".github/workflows: the test workflow runs the README's test command; the smoke workflow submits the
smoke experiment to a chosen target (local by default) with credentials referenced from secrets only."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO_ROOT / ".github" / "workflows"


def load(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def triggers(workflow: dict) -> dict:
    return workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` key as True


def run_lines(workflow: dict) -> list[str]:
    return [step["run"] for job in workflow["jobs"].values() for step in job["steps"] if "run" in step]


def readme_test_command() -> str:
    """The README's second set-up command (the first code block: run the demo; run the tests)."""
    block = re.search(r"```bash\n(.*?)```", (REPO_ROOT / "README.md").read_text(), re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines()]
    return next(command for command in commands if "test" in command)


def test_test_workflow_runs_exactly_the_readme_test_command():
    workflow = load("test.yml")
    assert {"push", "pull_request"} <= set(triggers(workflow))
    (job,) = workflow["jobs"].values()
    assert job["runs-on"].startswith("ubuntu")
    python = [step["with"]["python-version"] for step in job["steps"] if "setup-python" in step.get("uses", "")]
    assert python == ["3.11"]
    assert readme_test_command() == "bash scripts/test.sh"
    assert run_lines(workflow) == ["bash scripts/test.sh"]


def test_smoke_workflow_is_manual_or_scheduled_with_local_by_default():
    workflow = load("smoke.yml")
    on = triggers(workflow)
    target = on["workflow_dispatch"]["inputs"]["target"]
    assert target["default"] == "local" and target["type"] == "choice"
    assert target["options"] == ["local", "local-docker", "k8s", "vessl"]
    assert on["schedule"] and all("cron" in entry for entry in on["schedule"])
    (job,) = workflow["jobs"].values()
    assert job["env"]["TARGET"] == "${{ inputs.target || 'local' }}"  # a scheduled run has no inputs


def test_smoke_workflow_bootstraps_then_submits_the_smoke_experiment():
    lines = run_lines(load("smoke.yml"))
    bootstrap = next(i for i, run in enumerate(lines) if "bash scripts/bootstrap.sh" in run)
    submit = [i for i, run in enumerate(lines) if "wmtp submit smoke --target" in run]
    assert submit and submit[0] > bootstrap
    assert 'wmtp submit smoke --target "$TARGET"' in lines[submit[0]]


def test_smoke_credentials_come_from_secrets_and_are_never_printed():
    text = (WORKFLOWS / "smoke.yml").read_text()
    for name in (
        "KUBECONFIG_B64",
        "VESSL_ACCESS_TOKEN",
        "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
    ):
        assert f"${{{{ secrets.{name} }}}}" in text, name
    for run in run_lines(load("smoke.yml")):
        for line in run.splitlines():
            if re.search(r"\b(echo|printf|cat)\b", line) and re.search(r"KUBECONFIG_B64|TOKEN|PASSWORD", line):
                assert "base64 --decode >" in line, line  # decoded straight into a file, not the log
        assert "set -x" not in run and "secrets." not in run  # secrets reach commands only through env


@pytest.mark.parametrize("name", ["test.yml", "smoke.yml"])
def test_bootstrap_can_find_the_pinned_cpu_torch_wheel(name):
    """constraints.txt pins a `+cpu` local version that PyPI does not serve; the runner needs PyTorch's index."""
    pins = [line.split("#")[0].strip() for line in (REPO_ROOT / "constraints.txt").read_text().splitlines()]
    torch_pin = next(pin for pin in pins if pin.startswith("torch=="))
    (job,) = load(name)["jobs"].values()
    if "+cpu" in torch_pin:
        assert job["env"]["PIP_EXTRA_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"


@pytest.mark.parametrize("name", ["test.yml", "smoke.yml"])
def test_workflow_steps_are_well_formed(name):
    workflow = load(name)
    for job in workflow["jobs"].values():
        assert job.get("timeout-minutes")
        for step in job["steps"]:
            assert ("uses" in step) != ("run" in step), step
