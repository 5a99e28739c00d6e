"""The target registry: every module in wmtp_cli/platform/plugins/ is a target, its settings match its block
in jobs/defaults.yaml, its template ships, docs/platform.md's table is the registry's; and a new target is one
module (plus its template and defaults block), picked up by every command without another edit."""

from __future__ import annotations

import inspect
import re
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wmtp.assets import asset_dir
from wmtp_cli.main import app
from wmtp_cli.platform import registry
from wmtp_cli.platform.target import Target

REPO_ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def defaults_targets() -> dict:
    from wmtp.train.config import read_yaml

    return read_yaml(asset_dir("jobs") / "defaults.yaml")["targets"]


def test_every_plugin_module_is_a_target_named_after_it():
    targets = registry.targets()
    assert list(targets) == registry.names() == ["k8s", "local", "local-docker", "skypilot", "vessl"]
    for name, target in targets.items():
        assert isinstance(target, Target) and target.name == name
        assert target.summary and target.needs and "|" not in target.summary + target.needs  # table cells
        assert type(target).__module__ == f"{registry.PLUGIN_PACKAGE}.{name.replace('-', '_')}"


@pytest.mark.parametrize("name", registry.names())
def test_settings_model_validates_its_block_in_defaults(name):
    target = registry.get_target(name)
    block = defaults_targets().get(target.spec_key)
    if target.settings_model is None:
        assert block is None and target.settings({}) is None
        return
    assert block is not None, f"jobs/defaults.yaml: add targets.{target.spec_key}"
    assert target.settings({target.spec_key: block}).model_dump().keys() >= block.keys()


def test_defaults_has_a_block_only_for_registered_targets():
    with_settings = {t.spec_key for t in registry.targets().values() if t.settings_model is not None}
    assert set(defaults_targets()) == with_settings


@pytest.mark.parametrize("name", registry.names())
def test_template_ships_with_the_assets(name):
    target = registry.get_target(name)
    if target.template is None:
        return
    folder, file = target.template.split("/", 1)
    assert (asset_dir(folder) / file).is_file()


def test_foreground_targets_are_the_ones_that_track_no_jobs():
    """registry.FOREGROUND (read without importing the plug-ins) agrees with each target's tracks_jobs, and a
    foreground target refuses every lifecycle command in one line."""
    assert list(registry.FOREGROUND) == [name for name, target in registry.targets().items() if not target.tracks_jobs]
    for name in registry.FOREGROUND:
        for command in (["status", "x"], ["logs", "x"], ["cancel", "x"], ["ls"]):
            result = runner.invoke(app, [*command, "--target", name])
            assert result.exit_code == 2 and result.output.startswith(f"error: {command[0]} is not available"), command


def test_lifecycle_methods_are_documented_on_the_interface():
    for method in ("submit", "status", "logs", "cancel", "list_jobs", "settings", "render", "validate"):
        assert inspect.getdoc(getattr(Target, method)), method


def docs_targets_table() -> list[str]:
    text = (REPO_ROOT / "docs" / "platform.md").read_text()
    section = text[text.index("## Targets") :]
    section = section[: section.index("\n## ", 1)]
    start = section.index("| target | what it does | needs |")
    return list(__import__("itertools").takewhile(lambda line: line.startswith("|"), section[start:].splitlines()))


def test_docs_targets_table_is_the_registrys():
    """After adding or changing a target: `python -m wmtp_cli.platform.registry` prints the table."""
    assert docs_targets_table() == registry.markdown_table()


def test_target_choices_in_help_and_errors_come_from_the_registry():
    choices = "[" + "|".join(registry.names()) + "]"
    for command in ("submit", "render"):
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0 and choices in result.output, command
    # status / logs / cancel / ls refuse a foreground target (local): their help does not offer it
    tracked = "[" + "|".join(registry.tracked_names()) + "]"
    assert tracked != choices and "local" not in registry.tracked_names() and "local-docker" in tracked
    for command in ("status", "logs", "cancel", "ls"):
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0 and tracked in result.output and choices not in result.output, command
    wrong = runner.invoke(app, ["ls", "--target", "slurm"])
    assert wrong.exit_code == 2
    assert wrong.output == f"error: --target 'slurm': expected one of {', '.join(registry.names())}\n"


# A whole target in one module: settings, a "manifest", submit and the lifecycle. Dropped into the plugin
# folder (a temporary copy of it, here), every command knows it; its settings block comes from --set
# because jobs/defaults.yaml is shared (a real target adds it there).
SLURM = textwrap.dedent('''
    """--target slurm: an sbatch script (a stand-in target for the registry's tests)."""

    from wmtp_cli.platform.target import JobRow, Target
    from wmtp_cli.platform.targets import PlainName, TargetSettings


    class SlurmSettings(TargetSettings):
        partition: PlainName


    class SlurmTarget(Target):
        name = "slurm"
        summary = "an sbatch script"
        needs = "sbatch"
        settings_model = SlurmSettings

        def render(self, context, env_file):
            return f"#SBATCH --partition={context.settings['partition']}\\ntorchrun {' '.join(context.trainer_args)}\\n"

        def parse(self, manifest):
            return None

        def submit(self, job, env_file, server_dry_run):
            return [f"submitted {job.context.name}"], 0

        def status(self, ref, settings):
            return [f"{ref}: RUNNING on {settings['partition']}"]

        def logs(self, ref, settings, tail, follow):
            return iter(["step 1"] + (["step 2"] if follow else []))

        def cancel(self, ref, settings):
            return [f"scancel {ref}"]

        def list_jobs(self, settings):
            return [JobRow("wmtp-s1", "wmtp-s1", "RUNNING", None)]


    TARGET = SlurmTarget()
''')


@pytest.fixture
def slurm_plugin(tmp_path, monkeypatch):
    """The plugin folder plus slurm.py (a temporary folder on the package's path); caches reset around it."""
    import wmtp_cli.platform.plugins as plugins

    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "slurm.py").write_text(SLURM)
    monkeypatch.setattr(plugins, "__path__", [*plugins.__path__, str(folder)])
    registry.module_names.cache_clear()
    registry.targets.cache_clear()
    yield
    monkeypatch.undo()
    registry.module_names.cache_clear()
    registry.targets.cache_clear()
    __import__("sys").modules.pop(f"{registry.PLUGIN_PACKAGE}.slurm", None)


def test_a_new_target_is_one_module(slurm_plugin):
    shipped = [module.replace("_", "-") for module in registry.module_names() if module != "slurm"]
    assert registry.names() == sorted([*shipped, "slurm"])
    partition = ["--set", "targets.slurm.partition=gpu"]
    dry = runner.invoke(app, ["submit", "smoke", "--target", "slurm", "--name", "wmtp-s1", "--dry-run", *partition])
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.splitlines() == [
        "#SBATCH --partition=gpu",
        "torchrun -m wmtp.train smoke --run-dir storage/checkpoints/wmtp-s1",
    ]
    bad = runner.invoke(
        app, ["submit", "smoke", "--target", "slurm", "--dry-run", "--set", "targets.slurm.partition=a b"]
    )
    assert bad.exit_code == 2 and bad.output.startswith("error: targets.slurm.partition: expected a name")
    missing = runner.invoke(app, ["submit", "smoke", "--target", "slurm", "--dry-run"])
    assert missing.output == "error: targets.slurm: missing from the spec (jobs/defaults.yaml defines it)\n"
    submitted = runner.invoke(app, ["submit", "smoke", "--target", "slurm", "--name", "wmtp-s1", *partition])
    assert submitted.output == "submitted wmtp-s1\n"
    lifecycle = {
        ("status", "wmtp-s1"): "wmtp-s1: RUNNING on gpu\n",
        ("logs", "wmtp-s1", "--follow"): "step 1\nstep 2\n",
        ("cancel", "wmtp-s1"): "scancel wmtp-s1\n",
        ("ls",): "NAME     STATUS   AGE\nwmtp-s1  RUNNING  ?\n",
    }
    for command, expected in lifecycle.items():
        result = runner.invoke(app, [*command, "--target", "slurm", *partition])
        assert (result.exit_code, result.output) == (0, expected), command
    assert re.search(r"^\| `slurm` \| an sbatch script \| sbatch \|$", "\n".join(registry.markdown_table()), re.M)
