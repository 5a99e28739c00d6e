"""Experiment specs: YAML files in jobs/ merged and validated into one `StageSpec` per stage.

Resolution, for each stage named in the experiment's `stages` list:

    jobs/defaults.yaml ⊕ jobs/stages/<stage>.yaml ⊕ jobs/<experiment>.yaml (minus `stages`, `per_stage`)
      ⊕ <experiment>.per_stage.<stage> ⊕ jobs/presets/<preset>.yaml ⊕ --set key.path=value …

An experiment name is `./jobs/<name>.yaml` of the working directory when there is one, else the shipped
`jobs/<name>.yaml` (`find_experiment`); each layer comes from the spec's own folder when it has that file,
else from the shipped jobs/ (`layer_file`).

`⊕` is a deep merge (mappings merge key by key, anything else is replaced). Each objective has its own
section of settings (`td` for verifiable, `critic`, `rho1`; baseline none: wmtp.train.objectives) and a
stage spec carries only its objective's (`StageSpec` is a discriminated union on `objective`). The shared
layers (defaults, presets) may set any objective's section; the experiment file and `--set` those of the
objectives its stages run (each stage keeps its own); a stage's own layers (its stage file, `per_stage`)
its objective's only (`check_objective_sections`). Unknown keys are
rejected and every number is range-checked (floats must be finite; rules across keys such as
`td.w_min < td.w_max` too), before any model loads: every error is one line naming the key path, what
was expected and the value found (`SpecError`).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Sequence, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model, model_validator

from wmtp.assets import asset_dir
from wmtp.errors import RuleError, WmtpError
from wmtp.train.sections import (
    DataSection,
    DistributedSection,
    EarlyStoppingSection,
    EvalSection,
    ModelSection,
    OutputSection,
    Section,
    TrackingSection,
    TrainSection,
)


class SpecError(WmtpError):
    """A spec file, preset or override is malformed; the message names the key path."""


class StageSpec(Section):
    """One fully resolved stage of an experiment: everything `wmtp.train` needs.

    The sections every stage has are fields here; its objective's own section (`td`, `critic`, `rho1`, or
    none for baseline) is a field of the objective's subclass (`stage_spec_class`): a stage spec is one
    member of the discriminated union on `objective` (`parse_stage_spec`), built from the registry of
    objectives (wmtp.train.objectives), and carries only its objective's settings.
    """

    experiment: str
    stage: str
    objective: str  # the subclass's Literal[<its name>]
    model: ModelSection
    data: DataSection
    train: TrainSection = TrainSection()
    early_stopping: EarlyStoppingSection = EarlyStoppingSection()
    distributed: DistributedSection = DistributedSection()
    tracking: TrackingSection = TrackingSection()
    output: OutputSection = OutputSection()
    eval: Optional[EvalSection] = None  # end-of-stage evaluation; null = off
    targets: dict[str, dict[str, Any]] = {}  # per-target platform settings (read by the CLI)
    env: dict[str, Any] = {}  # environment constants and secret *names* (never values)

    @property
    def objective_class(self):
        """The `Objective` subclass of this stage (wmtp.train.objectives)."""
        from wmtp.train.objectives import objective_class

        return objective_class(self.objective)

    @model_validator(mode="after")
    def _check_objective_needs(self) -> "StageSpec":
        """The objective's own rules (`Objective.check_spec`), then its metric names and the monitor."""
        from wmtp.train.objectives import objectives

        if self.objective not in objectives():  # StageSpec itself, validated without its objective's class
            raise RuleError("objective", f"expected one of {choices(list(objectives()))} (got {self.objective!r})")
        cls = self.objective_class
        cls.check_spec(self)
        check_metric_names(cls, self)
        return self

    @model_validator(mode="after")
    def _check_across_sections(self) -> "StageSpec":
        if self.model.max_seq_len is not None and self.model.max_seq_len < self.data.max_length:
            raise RuleError(
                "model.max_seq_len",
                f"expected ≥ data.max_length, which is {self.data.max_length} "
                f"(RoPE positions for the longest sample), or null (got {self.model.max_seq_len})",
                ("data.max_length",),
            )
        self.check_validation_rows(world_size=1)  # one rank at least; launchers check their own count
        self.check_device()
        return self

    def check_device(self) -> None:
        """What an explicit `train.device` cannot run, refused before anything starts (`auto` is checked
        where the device is known: `wmtp.device`). MPS: one process, no bfloat16. float16's loss scaler
        skips a step on an overflow it finds in this rank's gradients: FSDP shards them, so ranks could
        disagree."""
        ranks = self.launch_world_size()
        if self.train.device == "mps" and ranks > 1:
            raise RuleError(
                "train.device",
                f"mps runs one process; expected distributed.strategy none (or "
                f"train.device cpu / cuda for {ranks} processes) (got mps)",
                ("distributed.strategy", "distributed.nproc_per_node"),
            )
        if self.train.device == "mps" and self.model.dtype == "bfloat16":
            raise RuleError(
                "model.dtype",
                "bfloat16 is not supported on mps (train.device); expected float32, float16 or auto (got bfloat16)",
                ("train.device",),
            )
        if self.model.dtype == "float16" and self.distributed.strategy == "fsdp" and ranks > 1:
            raise RuleError(
                "model.dtype",
                "float16 (loss scaling) does not run under distributed.strategy fsdp; "
                "expected auto, float32 or bfloat16, or strategy ddp (got float16)",
                ("distributed.strategy",),
            )

    def check_validation_rows(self, world_size: int) -> None:
        """Every rank runs the same number of full validation batches: fewer rows than one batch on each
        rank would turn validation off without a word (early stopping and best/ with it). Checked for
        one rank when the spec loads, for the launch's ranks by `wmtp train` (dry run included) and by
        every rank of a run before its run dir exists (`wmtp.train.runner.check_inputs`)."""
        per_round = world_size * self.train.batch_size
        if self.data.valid and self.data.valid_samples is not None and self.data.valid_samples < per_round:
            raise RuleError(
                "data.valid_samples",
                f"fewer rows than one batch per rank, so validation would never "
                f"run; expected ≥ ranks × train.batch_size = {world_size} × {self.train.batch_size} = "
                f"{per_round}, or null (got {self.data.valid_samples})",
                ("train.batch_size",),
            )

    def launch_world_size(self) -> int:
        """Processes `wmtp train` starts on this machine: nproc_per_node under DDP / FSDP, else one."""
        return self.distributed.nproc_per_node if self.distributed.strategy != "none" else 1

    def to_dict(self) -> dict:
        """The spec as plain data, its objective's section (if any) right after `train` (as files write it)."""
        data = self.model_dump(mode="json")
        section = self.objective_class.section
        if section is None:
            return data
        ordered = {}
        for key, value in data.items():
            if key != section:
                ordered[key] = value
            if key == "train":
                ordered[section] = data[section]
        return ordered

    def spec_hash(self) -> str:
        """12 hex digits of the spec as stored (URLs redacted): a hash of a credential, shown in the tags
        next to the rest of the spec, would let anyone guess-and-check the credential."""
        from wmtp.tracking import redact_urls

        shown = redact_urls(self.to_dict())
        return hashlib.sha256(json.dumps(shown, sort_keys=True).encode()).hexdigest()[:12]


def choices(names: list[str]) -> str:
    """'a', 'b' or 'c' (as pydantic lists a Literal's values)."""
    quoted = [repr(name) for name in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def check_metric_names(cls, spec: StageSpec) -> None:
    """What can be checked of the objective's metric names before a model loads: declared once each, none
    also logged by the loop, and `early_stopping.monitor` (or the objective's default) one of its validation
    losses. Whether `compute` logs exactly what it declares is a test (tests/integration/test_objectives.py)
    and, on every run, the loop's `reduce_metrics`."""
    from wmtp.train.objectives import LOOP_METRICS

    declared = cls.declared_metrics(spec, n_heads=2)
    for kind, names in (("train", declared.train), ("totals", declared.totals), ("pooled", declared.pooled)):
        twice = sorted({name for name in names if names.count(name) > 1})
        clash = sorted(set(names) & set(LOOP_METRICS)) if kind == "train" else []
        if twice or clash:
            raise RuleError(
                "objective",
                f"the {cls.name} objective's declared {kind} metrics name "
                f"{twice or clash} {'twice' if twice else 'as the loop does'} (got {cls.name!r})",
            )
    monitor = spec.early_stopping.monitor or cls.default_monitor
    heads = [int(k) for k in re.findall(r"head_(\d+)", monitor)]
    losses = [
        f"val/{k}" for k in cls.declared_metrics(spec, max([1, *heads])).validation if k.split("/")[0] in ("loss", "ce")
    ]
    if monitor not in losses:
        shown = ", ".join(dict.fromkeys(re.sub(r"head_\d+$", "head_K", k) for k in losses))
        heads_note = " (K: a head of the model)" if "head_K" in shown else ""
        raise RuleError(
            "early_stopping.monitor",
            f"{monitor!r} is not a validation loss of the {cls.name} objective "
            f"(lower is better); expected one of {shown}{heads_note} (got {monitor!r})",
        )


@functools.cache
def stage_spec_class(objective) -> type[StageSpec]:
    """`StageSpec` for one objective class: `objective: Literal[<name>]` and its section, if it has one."""
    fields: dict[str, Any] = {"objective": (Literal[objective.name], ...)}
    if objective.section:
        fields[objective.section] = (objective.config, Field(default_factory=objective.config))
    name = "".join(part.title() for part in objective.name.split("_")) + "StageSpec"
    return create_model(name, __base__=StageSpec, __module__=__name__, **fields)


def stage_spec_classes() -> dict[str, type[StageSpec]]:
    """Objective name → its StageSpec class, one per registered objective."""
    from wmtp.train.objectives import objectives

    return {name: stage_spec_class(cls) for name, cls in objectives().items()}


@functools.cache
def _union_adapter(classes: tuple[type[StageSpec], ...]) -> TypeAdapter:
    return TypeAdapter(Annotated[Union[classes], Field(discriminator="objective")])


def stage_spec_union() -> TypeAdapter:
    """The discriminated union of every objective's StageSpec, on `objective` (rebuilt if the registry grows)."""
    return _union_adapter(tuple(stage_spec_classes().values()))


def parse_stage_spec(data: dict) -> StageSpec:
    """A stage spec from plain data, validated as its objective's member of the union.

    A ValidationError names key paths as the spec writes them (`td.beta`, not the union's
    `verifiable.td.beta`): on an error the data is validated again by its member alone (or, when
    `objective` names none, by a model of the choices) to raise that member's errors."""
    try:
        return stage_spec_union().validate_python(data)
    except ValidationError:
        member = stage_spec_classes().get(str(data.get("objective"))) if isinstance(data, dict) else None
        if member is None:
            names = tuple(stage_spec_classes())
            create_model("ObjectiveChoice", objective=(Literal[names], ...)).model_validate(
                data if isinstance(data, dict) else {}
            )
        else:
            member.model_validate(data)
        raise


def drop_foreign_sections(data: dict) -> dict:
    """`data` without the sections of objectives other than its own (spec.yaml files written before stage specs
    held only their objective's section have every objective's)."""
    from wmtp.train.objectives import objectives, section_owners

    owners = section_owners()
    own = objectives().get(str(data.get("objective")))
    return {k: v for k, v in data.items() if k not in owners or (own is not None and k == own.section)}


class Experiment(BaseModel):
    """An experiment: its name and the resolved specs of its stages, in run order."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    name: str
    stages: list[StageSpec]


# ---------------------------------------------------------------- loading and merging


def deep_merge(base: dict, override: dict) -> dict:
    """`base ⊕ override`: mappings merge recursively, other values are replaced."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise SpecError(f"{path}: spec file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise SpecError(f"{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping at the top level, found {type(data).__name__}")
    return data


EXPONENT_ONLY_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` → (["a","b","c"], value parsed as YAML, so 3 → int, [1,2] → list, null → None)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise SpecError(f"override {text!r}: expected KEY.PATH=VALUE, e.g. train.lr=3e-5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and EXPONENT_ONLY_FLOAT.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads 3e-5 (no dot) as a string; an error would quote it as '3e-5'
    return key.strip().split("."), value


def nest(path: list[str], value: Any) -> dict:
    for part in reversed(path):
        value = {part: value}
    return value


def layer_setting(layers: list[tuple[str, dict]], loc: tuple) -> Optional[str]:
    """Name of the last layer that sets the key path `loc` (the one whose value won the merge)."""
    for name, layer in reversed(layers):
        node: Any = layer
        for part in loc:
            if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                node = node[part]  # an item of a list: train.betas.1
                continue
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            return name
    return None


def format_validation_error(exc: ValidationError, origin: str, layers: list[tuple[str, dict]] = ()) -> str:
    """The first error as one line: `<origin>[, from --set …]: <key.path>: <what was expected> (got <value>)`."""
    first = exc.errors()[0]
    loc, message = tuple(first["loc"]), first["msg"]
    rule = (first.get("ctx") or {}).get("error")
    keys = [loc]
    if isinstance(rule, RuleError):  # a model validator's rule: the key it blames, then the keys it read
        keys = [loc + tuple(key.split(".")) for key in (rule.key, *rule.related)]
        loc, message = keys[0], rule.message  # the rule's message ends with the values it found
    elif first["type"] == "extra_forbidden":
        message = "unknown key"
    else:
        message = message.removeprefix("Value error, ")
        shown = repr(first.get("input"))
        if "input" in first and first["type"] != "missing" and len(shown) <= 200:  # not a whole section
            message += f" (got {shown})"
    names = [name for name, _ in layers]
    setters = [setter for setter in (layer_setting(list(layers), key) for key in keys) if setter is not None]
    latest = max(setters, key=names.index) if setters else None  # the last layer that set a key involved
    if latest is not None and latest.startswith("--set"):
        origin = f"{origin}, from {latest}"
    location = ".".join(str(part) for part in loc) or "(top level)"
    more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{origin}: {location}: {message}{more}"


# The working directory's jobs/: experiments a user wrote or copied (`wmtp jobs cp`) and edited. A name
# is looked up there before the shipped jobs/, so an edited copy is what runs wherever wmtp is installed.
LOCAL_JOBS = Path("jobs")


@dataclass(frozen=True)
class SpecSource:
    """What an experiment argument resolved to: `path`, and whether it is a `./jobs` file (`local`) that
    hides a shipped experiment of the same name (`shadows`). A YAML path given as such is neither."""

    path: Path
    local: bool = False
    shadows: bool = False

    @property
    def shown(self) -> str:
        """The path as typed from the working directory: `./jobs/smoke.yaml`."""
        return f"./{self.path.as_posix()}" if self.local else str(self.path)


def experiment_names(folder: Path) -> list[str]:
    """The experiments of a jobs/ folder: its *.yaml files but defaults.yaml."""
    return sorted(p.stem for p in folder.glob("*.yaml") if p.stem != "defaults") if folder.is_dir() else []


def same_file(a: Path, b: Path) -> bool:
    """Both exist and are one file: a checkout's ./jobs is the shipped jobs/ of its editable install."""
    try:
        return a.samefile(b)
    except OSError:
        return False


def find_experiment(experiment: str) -> SpecSource:
    """A path to a YAML file, or an experiment name: `./jobs/<name>.yaml` first, then the shipped one."""
    candidate = Path(experiment)
    if candidate.suffix in (".yaml", ".yml"):
        return SpecSource(candidate)
    shipped = asset_dir("jobs") / f"{experiment}.yaml"
    local = LOCAL_JOBS / f"{experiment}.yaml"
    if local.is_file() and not same_file(local, shipped):
        return SpecSource(local, local=True, shadows=shipped.is_file())
    if shipped.is_file():
        return SpecSource(shipped)
    available = sorted({*experiment_names(LOCAL_JOBS), *experiment_names(asset_dir("jobs"))})
    raise SpecError(
        f"experiment {experiment!r}: no jobs/{experiment}.yaml; available: {available} (./jobs, then the shipped jobs/)"
    )


def resolve_spec_path(experiment: str) -> Path:
    """The spec file of a YAML path or an experiment name (see `find_experiment`)."""
    return find_experiment(experiment).path


def layer_file(spec_path: Path, relative: str) -> Path:
    """A layer of the spec (`defaults.yaml`, `stages/<stage>.yaml`, `presets/<name>.yaml`): the one in the
    spec's own folder when that folder has it, else the shipped one. File by file, so a folder holding
    only an edited experiment (or one edited stage file) gets the shipped rest."""
    own = spec_path.parent / relative
    return own if own.is_file() else asset_dir("jobs") / relative


def load_experiment(
    experiment: str, overrides: Optional[list[str]] = None, preset: Optional[str | Sequence[str]] = None
) -> Experiment:
    """Resolve and validate every stage of an experiment (a jobs/ name or a YAML path).

    `preset`: a jobs/presets/ name, or several applied in order (`wmtp train --micro --preset local-light`
    applies `micro`, then `local-light`)."""
    spec_path = resolve_spec_path(experiment)
    experiment_doc = read_yaml(spec_path)
    stage_names = experiment_doc.pop("stages", None)
    per_stage = experiment_doc.pop("per_stage", {}) or {}
    if not isinstance(stage_names, list) or not stage_names:
        raise SpecError(f"{spec_path}: stages: expected a non-empty list, e.g. [critic, verifiable]")
    unknown_stage_keys = sorted(set(per_stage) - set(stage_names))
    if unknown_stage_keys:
        raise SpecError(f"{spec_path}: per_stage.{unknown_stage_keys[0]}: not one of the stages {stage_names}")
    layers = [("defaults", read_yaml(layer_file(spec_path, "defaults.yaml")))]
    preset_layer = []
    for name in [preset] if isinstance(preset, str) else list(preset or []):
        preset_file = layer_file(spec_path, f"presets/{name}.yaml")
        if not preset_file.is_file():
            names = sorted(
                {
                    p.stem
                    for folder in (spec_path.parent, asset_dir("jobs"))
                    for p in (folder / "presets").glob("*.yaml")
                }
            )
            raise SpecError(f"preset {name!r}: no {preset_file}; available: {names}")
        preset_layer.append((str(preset_file), read_yaml(preset_file)))
    override_layers = [(f"--set {text}", nest(*parse_override(text))) for text in overrides or []]
    name = experiment_doc.pop("name", spec_path.stem)
    resolved = []
    for stage in stage_names:
        stage_file = layer_file(spec_path, f"stages/{stage}.yaml")
        stage_layers = [
            *layers,
            (str(stage_file), read_yaml(stage_file)),
            (str(spec_path), experiment_doc),
            (f"{spec_path} per_stage.{stage}", per_stage.get(stage, {}) or {}),
            *preset_layer,
            *override_layers,
        ]
        merged: dict = {}
        for _, layer in stage_layers:
            merged = deep_merge(merged, layer)
        merged.setdefault("stage", stage)
        merged["experiment"] = name
        # Which objectives' sections each layer may set (check_objective_sections), layer by layer.
        reach = (
            ["any"] * len(layers)
            + ["own", "experiment", "own"]
            + ["any"] * len(preset_layer)
            + ["experiment"] * len(override_layers)
        )
        resolved.append((stage, stage_layers, merged, reach))
    check_objective_sections(name, spec_path, resolved)
    stages = []
    for stage, stage_layers, merged, _ in resolved:
        try:
            stages.append(parse_stage_spec(drop_foreign_sections(merged)))
        except ValidationError as exc:
            origin = f"{spec_path} (stage {stage})"
            raise SpecError(format_validation_error(exc, origin, stage_layers)) from None
    check_unused_sections(resolved)
    return Experiment(name=name, stages=stages)


def section_settings(layer: dict, owners: dict[str, str]) -> list[tuple[str, str]]:
    """(section, the first key path set under it) of each objective section a layer sets: (`td`, `td.beta`)."""
    found = []
    for key, value in layer.items():
        if key in owners:
            path = key
            while isinstance(value, dict) and value:
                first = next(iter(value))
                path, value = f"{path}.{first}", value[first]
            found.append((key, path))
    return found


def check_objective_sections(name: str, spec_path: Path, resolved: list[tuple[str, list, dict, list]]) -> None:
    """Each layer may set the sections of the objectives it can reach: a stage's own layers (its stage file,
    `per_stage.<stage>`) its objective's only; the experiment file and `--set` those of objectives some stage
    of the experiment runs (each stage keeps its own, `drop_foreign_sections`); the shared layers (defaults,
    presets: written for every experiment) any objective's. Anything else is a SpecError naming the key."""
    from wmtp.train.objectives import objectives, section_owners

    registry, owners = objectives(), section_owners()
    objective_of = {stage: merged.get("objective") for stage, _, merged, _ in resolved}
    if not all(isinstance(o, str) and o in registry for o in objective_of.values()):
        return  # a stage's `objective` is the first error, named when that stage validates
    used = list(dict.fromkeys(objective_of.values()))
    for stage, stage_layers, _, reach in resolved:
        objective = objective_of[stage]
        for (layer_name, layer), may_set in zip(stage_layers, reach):
            for section, path in section_settings(layer, owners):
                owner = owners[section]
                if may_set == "own":
                    if owner != objective:
                        raise SpecError(
                            f"{layer_name}: {path}: a setting of the {owner} objective; stage {stage} "
                            f"runs the {objective} objective"
                        )
                elif may_set == "experiment" and owner not in used:
                    origin = f"{spec_path}, from {layer_name}" if layer_name.startswith("--set ") else layer_name
                    raise SpecError(
                        f"{origin}: {path}: a setting of the {owner} objective, which no stage of "
                        f"experiment {name} runs (its objectives: {', '.join(used)})"
                    )


@functools.cache
def sections_model(sections: tuple[tuple[str, type[Section]], ...]) -> type[Section]:
    return create_model(
        "ObjectiveSections", __base__=Section, **{section: (Optional[config], None) for section, config in sections}
    )


def check_unused_sections(resolved: list[tuple[str, list, dict, list]]) -> None:
    """Sections of objectives no stage runs (set by defaults or a preset, which every experiment shares):
    not part of any stage, but still validated, so that a typo in them is named rather than ignored."""
    from wmtp.train.objectives import objectives

    _, stage_layers, merged, _ = resolved[0]
    used = {str(stage_merged.get("objective")) for _, _, stage_merged, _ in resolved}
    unused = [(cls.section, cls.config) for cls in objectives().values() if cls.section and cls.name not in used]
    present = {section: merged[section] for section, _ in unused if section in merged}
    if not present:
        return
    try:
        sections_model(tuple(unused)).model_validate(present)
    except ValidationError as exc:
        loc = tuple(exc.errors()[0]["loc"])
        origin = layer_setting(stage_layers, loc) or layer_setting(stage_layers, loc[:1]) or "(defaults)"
        raise SpecError(format_validation_error(exc, origin, stage_layers)) from None


def select_stages(experiment: Experiment, names: Optional[list[str]]) -> Experiment:
    """The experiment cut down to the stages `names` (`wmtp train --stage`), in the experiment's order.

    No names: the whole experiment. An unknown name is one line listing the experiment's stages.
    """
    if not names:
        return experiment
    known = [spec.stage for spec in experiment.stages]
    for name in names:
        if name not in known:
            raise SpecError(
                f"--stage {name}: not a stage of experiment {experiment.name}; its stages: {', '.join(known)}"
            )
    return Experiment(name=experiment.name, stages=[spec for spec in experiment.stages if spec.stage in names])


def check_world_size(experiment: Experiment, world_size: int) -> None:
    """Refuse stages whose validation rows cannot give every one of `world_size` ranks a full batch."""
    for spec in experiment.stages:
        try:
            spec.check_validation_rows(world_size)
        except RuleError as rule:
            raise SpecError(f"stage {spec.stage}: {rule} with {world_size} ranks") from None


def dump_spec(spec: StageSpec) -> str:
    """The spec as YAML for people and files (dry runs, `<stage>/spec.yaml`): URLs with their userinfo,
    query and fragment redacted (`tracking.uri: http://***@host`); the run itself uses the real values."""
    from wmtp.tracking import redact_urls

    return yaml.safe_dump(redact_urls(spec.to_dict()), sort_keys=False)
