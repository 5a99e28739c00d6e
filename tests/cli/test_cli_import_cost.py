"""Commands that only print help or resolve a spec import no torch / MLflow (seconds each, see the CLI issue).

Not timing-based: each command runs through CliRunner in a fresh interpreter, which then reports which of
the heavy packages ended up in `sys.modules`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# Needed only by a command's body (training, evaluation, tracking, submitting), never to answer these.
HEAVY = ("torch", "mlflow", "matplotlib", "transformers", "boto3", "kubernetes", "docker", "vessl", "sky")

PROBE = """
import json, sys
from typer.testing import CliRunner
from wmtp_cli.main import app
result = CliRunner().invoke(app, sys.argv[1:])
heavy = sorted({name.split(".")[0] for name in sys.modules} & set(json.loads(sys.stdin.read())))
print(json.dumps({"exit_code": result.exit_code, "output": result.output, "heavy": heavy}))
"""


def run_probe(args: list[str]) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        input=json.dumps(HEAVY),
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["--version"],
        ["train", "--help"],
        ["model", "--help"],
        ["data", "--help"],
        ["eval", "--help"],
        ["submit", "--help"],
        ["jobs", "--help"],
        ["jobs", "ls"],
        ["jobs", "cp", "--help"],
        ["compare", "--help"],
        ["train", "smoke", "--dry-run"],
        ["train", "verifiable", "--dry-run", "--set", "train.lr=3e-5"],
        ["submit", "baseline", "--target", "k8s", "--name", "wmtp-import-cost", "--dry-run"],
        ["submit", "baseline", "--target", "local", "--name", "wmtp-import-cost", "--dry-run"],
        ["submit", "baseline", "--target", "skypilot", "--name", "wmtp-import-cost", "--dry-run"],
    ],
    ids=" ".join,
)
def test_help_and_dry_runs_import_no_heavy_package(args):
    report = run_probe(args)
    assert report["exit_code"] == 0, report["output"]
    assert report["heavy"] == [], f"`wmtp {' '.join(args)}` imported {report['heavy']}"


def test_model_package_exports_load_lazily():
    """`wmtp.model` keeps its public names; the tokenizer (sentencepiece) alone does not import torch."""
    code = (
        "import sys\nfrom wmtp.model import ModelArgs, load_tokenizer\nassert 'torch' not in sys.modules\n"
        "import wmtp.data.collate  # binds the submodule wmtp.model.mtp_loss on the package\n"
        "from wmtp.model import IGNORE_INDEX, Transformer, load_model, mtp_loss\n"
        "assert callable(mtp_loss) and mtp_loss.__name__ == 'mtp_loss', mtp_loss\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
