"""A `./jobs` experiment submitted to a container: the image has only the shipped jobs/, so what the local
file changes travels in the trainer's command line as `--set`, over the shipped experiment of that name.

The carried overrides are checked, not trusted: the shipped experiment with them (and the user's own
`--set`) must resolve to exactly the specs validated here, stage by stage, or the job is refused in one
line. What `--set` cannot say — a value for one stage only, a removed key, other stages, a local-only
experiment — is refused that way, never rendered into a job that would train something else.
"""

from __future__ import annotations

import json
from typing import Any, Iterator, Optional

from wmtp.assets import asset_dir
from wmtp.errors import WmtpError
from wmtp_cli.platform.targets import url_credentials

# Read by the CLI to shape the job (build_context takes them from the local spec); the trainer never
# reads them, and `--set targets.…` is not passed to it either.
PLATFORM_ONLY_KEYS = ("targets",)
MISSING = object()  # a key path one side lacks (never equal to a value)


def image_arguments(
    experiment: str, here, target: str, overrides: list[str], preset: Optional[str], in_container: bool = True
) -> tuple[Optional[list[str]], Optional[str]]:
    """(`--set` texts to put before the user's, the `--preset` to pass) for the container's trainer, so that
    the shipped experiment resolves there as `experiment` resolved here (`here`, with `overrides` and
    `preset`). None to carry for a target that runs here (`in_container` false: same machine, same working
    directory, the file itself), none needed ([]) for a shipped experiment."""
    from wmtp.train.config import SpecError, find_experiment, load_experiment

    if not in_container:
        return None, preset
    source = find_experiment(experiment)
    if not source.local:
        return [], preset
    where = source.shown
    if not source.shadows:
        raise WmtpError(
            f"experiment {experiment!r}: {where} is not a shipped experiment and --target {target} runs "
            "in a container that only has the shipped jobs/; add it to jobs/ and rebuild the image, or "
            "use --target local"
        )
    shipped_path = str(asset_dir("jobs") / source.path.name)
    # A preset of the local folder does not exist in the image: its values are carried instead.
    image_preset = preset if preset and not (source.path.parent / "presets" / f"{preset}.yaml").is_file() else None
    try:
        shipped = load_experiment(shipped_path, overrides, image_preset)
    except SpecError as exc:
        raise WmtpError(
            f"{where}: a --target {target} container runs the shipped {experiment}, which your --set / "
            f"--preset do not fit: {exc}"
        ) from None
    local_stages = [stage.stage for stage in here.stages]
    shipped_stages = [stage.stage for stage in shipped.stages]
    if local_stages != shipped_stages:
        raise WmtpError(
            f"{where}: stages {local_stages} differ from the shipped {experiment}'s {shipped_stages}; "
            f"--target {target} runs in a container that only has the shipped jobs/ (add the file to "
            "jobs/ and rebuild the image, or use --target local)"
        )
    carried: dict[tuple, Any] = {}
    changed_in: dict[tuple, list[str]] = {}  # key path → the stages where the local file changes it
    for mine, theirs in zip(here.stages, shipped.stages):
        theirs_leaves = dict(leaves(trainer_view(theirs.to_dict())))
        for path, value in leaves(trainer_view(mine.to_dict())):
            if theirs_leaves.get(path, MISSING) != value:
                carried.setdefault(path, value)
                changed_in.setdefault(path, []).append(mine.stage)
    texts = [override_text(path, value) for path, value in carried.items()]
    for path, value in carried.items():
        found = next(filter(None, map(url_credentials, strings_in(value))), None)
        if found:
            raise WmtpError(
                f"{where}: {'.'.join(map(str, path))}: a URL with credentials ({found}) would be "
                "written into the manifest in plain text; pass them as secrets (env.secrets) instead"
            )
    check_carried(experiment, where, target, here, shipped_path, texts + list(overrides), image_preset, changed_in)
    return texts, image_preset


def trainer_view(spec: dict) -> dict:
    """A resolved stage as the trainer uses it: without the platform-only keys."""
    return {key: value for key, value in spec.items() if key not in PLATFORM_ONLY_KEYS}


def leaves(tree: dict, prefix: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """(key path, value) of every non-mapping value (a list is one value: `--set` replaces lists whole)."""
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def strings_in(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from strings_in(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings_in(item)


def override_text(path: tuple, value: Any) -> str:
    """`key.path=value`, the value as the trainer's `--set` parses it back: plain when it reads back
    unchanged (train.max_steps=7, model.path=storage/x), else as a JSON literal (which YAML reads)."""
    from wmtp.train.config import parse_override

    key = ".".join(str(part) for part in path)
    if isinstance(value, str) and value == value.strip():
        try:
            if parse_override(f"{key}={value}")[1] == value:
                return f"{key}={value}"
        except WmtpError:
            pass  # not a KEY=VALUE it can read: quoted below
    return f"{key}={json.dumps(value)}"


def check_carried(
    experiment: str,
    where: str,
    target: str,
    here,
    shipped_path: str,
    overrides: list[str],
    preset: Optional[str],
    changed_in: dict[tuple, list[str]],
) -> None:
    """The container's resolution (shipped file + carried and user --set + image preset) equals this one;
    else one line naming the first key that differs (and the stages the local file changes it in)."""
    from wmtp.train.config import SpecError, load_experiment

    try:
        there = load_experiment(shipped_path, overrides, preset)
    except SpecError as exc:
        raise WmtpError(
            f"{where}: its differences from the shipped {experiment} do not fit a --set ({exc}); "
            f"--target {target} runs in a container that only has the shipped jobs/"
        ) from None
    for mine, theirs in zip(here.stages, there.stages):
        mine_leaves = dict(leaves(trainer_view(mine.to_dict())))
        theirs_leaves = dict(leaves(trainer_view(theirs.to_dict())))
        for path in [*mine_leaves, *(p for p in theirs_leaves if p not in mine_leaves)]:
            if mine_leaves.get(path, MISSING) != theirs_leaves.get(path, MISSING):
                key = ".".join(str(part) for part in path)
                what = (
                    f"changed for stage {', '.join(changed_in[path])} only"
                    if path in changed_in
                    else f"of stage {mine.stage} cannot be set that way (a removed or renamed key)"
                )
                raise WmtpError(
                    f"{where}: {key} {what}: a --target {target} container only has the shipped jobs/ and gets the "
                    f"shipped {experiment} with --set, which sets every stage alike and removes no key; change it "
                    "for every stage, or add the file to jobs/ and rebuild the image, or use --target local"
                )
