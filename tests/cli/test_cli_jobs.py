"""Experiments from the working directory: `./jobs/NAME.yaml` before the shipped one for `wmtp train` /
`submit` / `render`, `wmtp jobs ls` (stages, source, shadowing) and `wmtp jobs cp` (a copy to edit)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from wmtp.assets import asset_dir
from wmtp.train.config import load_experiment
from wmtp_cli.main import app

runner = CliRunner()
REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED = asset_dir("jobs")


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.fixture
def cwd(tmp_path, monkeypatch) -> Path:
    """A working directory outside the checkout, as a user of the installed wheel has."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def edited_smoke(cwd: Path, old: str = "max_steps: 12", new: str = "max_steps: 7") -> Path:
    """./jobs/smoke.yaml: the shipped smoke with one line changed."""
    text = (SHIPPED / "smoke.yaml").read_text()
    assert old in text
    path = cwd / "jobs" / "smoke.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text.replace(old, new))
    return path


def test_train_dry_run_uses_the_edited_local_spec_and_says_so_on_stderr(cwd):
    edited_smoke(cwd)
    result = runner.invoke(app, ["train", "smoke", "--dry-run"])
    assert result.exit_code == 0, result.output
    specs = [yaml.safe_load(part) for part in result.stdout.split("---\n") if part.strip()]
    assert [spec["stage"] for spec in specs] == ["critic", "verifiable", "baseline", "rho1"]
    assert {spec["train"]["max_steps"] for spec in specs} == {7}
    assert result.stderr == "using ./jobs/smoke.yaml (shadows the shipped smoke)\n"


def test_submit_to_a_container_carries_the_local_changes_as_set(cwd):
    edited_smoke(cwd)
    result = runner.invoke(app, ["submit", "smoke", "--target", "k8s", "--name", "wmtp-local", "--dry-run"])
    assert result.exit_code == 0, result.output
    manifest = yaml.safe_load(result.stdout)  # stdout is the manifest alone
    args = manifest["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["args"]
    assert args == [
        "-m",
        "wmtp.train",
        "smoke",
        "--set",
        "train.max_steps=7",
        "--run-dir",
        "storage/checkpoints/wmtp-local",
    ]
    assert result.stderr.splitlines() == [
        "using ./jobs/smoke.yaml (shadows the shipped smoke); the container gets the shipped smoke with "
        "--set train.max_steps=7",
        "# dry run: k8s job wmtp-local not submitted",
    ]
    # What the container's trainer resolves (the shipped smoke + those --set) is what was validated here.
    there = load_experiment(str(SHIPPED / "smoke.yaml"), ["train.max_steps=7"])
    assert [s.to_dict() for s in there.stages] == [s.to_dict() for s in load_experiment("smoke").stages]


def test_submit_local_and_render_use_the_local_spec(cwd):
    edited_smoke(cwd)
    local = runner.invoke(app, ["submit", "smoke", "--target", "local", "--name", "wmtp-local", "--dry-run"])
    assert local.exit_code == 0, local.output
    assert local.stdout == "wmtp train smoke --run-dir storage/checkpoints/wmtp-local\n"  # same cwd, same file
    assert local.stderr.startswith("using ./jobs/smoke.yaml (shadows the shipped smoke)\n")
    out = cwd / "k8s.yaml"
    rendered = runner.invoke(app, ["render", "smoke", "--target", "k8s", "-o", str(out), "--name", "wmtp-local"])
    assert rendered.exit_code == 0, rendered.output
    assert rendered.stdout == f"wrote {out} (k8s job wmtp-local)\n"
    assert '"train.max_steps=7"' in out.read_text()


def test_a_change_for_one_stage_only_cannot_reach_a_container(cwd):
    edited_smoke(cwd, "train: {lr: 1.0e-2}", "train: {lr: 2.0e-2}")  # per_stage.critic
    line = one_error_line(runner.invoke(app, ["submit", "smoke", "--target", "k8s", "--dry-run"]))
    assert line.startswith(
        "error: ./jobs/smoke.yaml: train.lr changed for stage critic only: a --target k8s "
        "container only has the shipped jobs/"
    )
    assert runner.invoke(app, ["submit", "smoke", "--target", "local", "--dry-run"]).exit_code == 0


def test_a_local_only_experiment_trains_here_but_is_refused_for_a_container(cwd):
    (cwd / "jobs").mkdir()
    (cwd / "jobs" / "mine.yaml").write_text("stages: [baseline]\ntrain: {max_steps: 3}\n")
    result = runner.invoke(app, ["train", "mine", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "max_steps: 3" in result.stdout and result.stderr == "using ./jobs/mine.yaml\n"
    line = one_error_line(runner.invoke(app, ["submit", "mine", "--target", "vessl", "--dry-run"]))
    assert line.startswith("error: experiment 'mine': ./jobs/mine.yaml is not a shipped experiment")


def test_local_layers_apply_to_local_specs_only_and_fall_back_file_by_file(cwd):
    edited_smoke(cwd)
    stages = cwd / "jobs" / "stages"
    stages.mkdir()
    (stages / "baseline.yaml").write_text(
        (SHIPPED / "stages" / "baseline.yaml").read_text() + "train: {weight_decay: 0.05}\n"
    )
    local = {s.stage: s for s in load_experiment("smoke").stages}
    assert local["baseline"].train.weight_decay == 0.05  # ./jobs/stages/baseline.yaml
    assert local["critic"].objective == "critic"  # no ./jobs/stages/critic.yaml: the shipped one
    assert load_experiment("baseline").stages[0].train.weight_decay != 0.05  # the shipped baseline: shipped layers
    listing = runner.invoke(app, ["jobs", "ls"]).stdout
    assert "shadows the shipped one; ./jobs stages/baseline.yaml; the rest shipped" in listing


def test_jobs_ls_lists_both_sources_and_the_shadowing(cwd):
    edited_smoke(cwd)
    (cwd / "jobs" / "mine.yaml").write_text("stages: [critic, verifiable]\n")
    result = runner.invoke(app, ["jobs", "ls"])
    assert result.exit_code == 0, result.output
    rows = [line.split(None, 1) for line in result.stdout.splitlines()]
    assert [row[0] for row in rows] == ["NAME", "baseline", "critic", "mine", "pycode", "rho1", "smoke", "verifiable"]
    by_name = {row[0]: row[1] for row in rows}
    assert by_name["baseline"].split() == ["baseline", "shipped"]
    assert by_name["mine"].split("  ")[0] == "critic, verifiable"
    assert by_name["mine"].endswith("./jobs   shipped defaults and stages")
    assert by_name["smoke"].startswith("critic, verifiable, baseline, rho1")
    assert by_name["smoke"].endswith("./jobs   shadows the shipped one; shipped defaults and stages")


def test_in_the_checkout_its_jobs_are_the_shipped_ones_not_a_shadow(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # ./jobs and asset_dir("jobs") are one folder (editable install)
    if (REPO_ROOT / "jobs").resolve() != SHIPPED.resolve():
        pytest.skip("wmtp is installed from elsewhere: the checkout's jobs/ is a local folder here")
    listing = runner.invoke(app, ["jobs", "ls"]).stdout
    assert "./jobs" not in listing and "shadows" not in listing
    result = runner.invoke(app, ["train", "smoke", "--dry-run"])
    assert result.exit_code == 0 and result.stderr == ""
    line = one_error_line(runner.invoke(app, ["jobs", "cp", "smoke"]))
    assert line == "error: ./jobs/smoke.yaml is the shipped file itself (this checkout's jobs/): edit it there"


def test_jobs_cp_writes_the_shipped_file_then_refuses_to_overwrite_it(cwd):
    result = runner.invoke(app, ["jobs", "cp", "smoke"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "wrote ./jobs/smoke.yaml\nnext: edit ./jobs/smoke.yaml, then `wmtp train smoke --dry-run`\n"
    copy = cwd / "jobs" / "smoke.yaml"
    assert copy.read_text() == (SHIPPED / "smoke.yaml").read_text()
    copy.write_text(copy.read_text() + "# mine\n")
    line = one_error_line(runner.invoke(app, ["jobs", "cp", "smoke"]))
    assert line == "error: ./jobs/smoke.yaml already exists: edit it, or delete it to copy the shipped one again"
    assert copy.read_text().endswith("# mine\n")


def test_jobs_cp_with_defaults_and_to_another_folder(cwd):
    result = runner.invoke(app, ["jobs", "cp", "verifiable", "--with-defaults", "--to", "exp"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "wrote ./exp/verifiable.yaml",
        "wrote ./exp/defaults.yaml",
        "wrote ./exp/stages/critic.yaml",
        "wrote ./exp/stages/verifiable.yaml",
        "next: edit ./exp/verifiable.yaml, then `wmtp train exp/verifiable.yaml --dry-run` (only ./jobs is "
        "searched by name)",
    ]
    # One destination taken: nothing at all is written.
    (cwd / "jobs").mkdir()
    (cwd / "jobs" / "defaults.yaml").write_text("{}\n")
    line = one_error_line(runner.invoke(app, ["jobs", "cp", "critic", "--with-defaults"]))
    assert line.startswith("error: ./jobs/defaults.yaml already exists")
    assert sorted(p.name for p in (cwd / "jobs").iterdir()) == ["defaults.yaml"]


def test_unknown_names_list_the_available_ones(cwd):
    line = one_error_line(runner.invoke(app, ["jobs", "cp", "nosuch"]))
    assert (
        line == "error: experiment 'nosuch': not a shipped experiment; "
        "shipped: baseline, critic, pycode, rho1, smoke, verifiable"
    )
    (cwd / "jobs").mkdir()
    (cwd / "jobs" / "mine.yaml").write_text("stages: [baseline]\n")
    line = one_error_line(runner.invoke(app, ["train", "nosuch", "--dry-run"]))
    assert (
        "experiment 'nosuch': no jobs/nosuch.yaml; available: ['baseline', 'critic', 'mine', 'pycode', 'rho1'" in line
    )


def test_a_broken_local_spec_is_one_line_naming_it(cwd):
    (cwd / "jobs").mkdir()
    (cwd / "jobs" / "mine.yaml").write_text("stages: baseline\n")
    line = one_error_line(runner.invoke(app, ["jobs", "ls"]))
    assert line == "error: jobs/mine.yaml: stages: expected a non-empty list, e.g. [critic, verifiable]"
