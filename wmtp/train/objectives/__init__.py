"""Objectives: how a batch becomes a loss and metrics. The training loop knows nothing else.

| objective  | section | token weights                          | trainable                       |
|------------|---------|----------------------------------------|---------------------------------|
| baseline   | —       | 1                                      | policy                          |
| critic     | critic  | — (value loss only, trunk frozen)      | value head                      |
| verifiable | td      | clip(exp(δ/β), w_min, w_max) from TD   | policy + value head             |
| rho1       | rho1    | reference excess loss (soft / top-k)   | policy                          |

The registry: every module of this package but `base` and those whose names start with `_` is one
objective, named as the module is, and defines `OBJECTIVE`, its `Objective` subclass (base.py says what
that declares). Nothing else lists the objectives: the spec schema (`wmtp.train.config`: a discriminated
union on `objective:`, each stage carrying only its objective's section), the input checks, the loop and
the tests all come from here. Adding one is a module here and its `jobs/stages/<name>.yaml`
(docs/adding-an-objective.md).

Light to import (a spec loads without torch): `TrainModule` and `build_objective` import torch when used.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from pathlib import Path
from typing import TYPE_CHECKING

from wmtp.train.objectives.base import (
    LOOP_METRICS,
    VALUE_HEAD_FILE,
    InputPath,
    MetricNames,
    Objective,
    ObjectiveOutput,
    ce_totals,
    head_metrics,
    lazy_module,
    per_head_weights,
    pooled_metrics,
    stat_names,
)

if TYPE_CHECKING:
    import torch

    from wmtp.train.config import StageSpec

    # The lazy exports (_LAZY below), named for type checkers.
    from wmtp.train.objectives._train_module import TrainModule  # noqa: F401
    from wmtp.train.objectives.baseline import BaselineObjective  # noqa: F401
    from wmtp.train.objectives.critic import CriticObjective, CriticSection  # noqa: F401
    from wmtp.train.objectives.rho1 import Rho1Objective, Rho1Section  # noqa: F401
    from wmtp.train.objectives.verifiable import TDSection, VerifiableObjective, load_value_head  # noqa: F401

NOT_OBJECTIVES = ("base",)  # helper modules of the package (and any `_name`)


def module_names() -> tuple[str, ...]:
    """The objective modules of the package, sorted (found without importing them)."""
    found = {info.name for info in pkgutil.iter_modules(__path__)}
    return tuple(sorted(name for name in found if name not in NOT_OBJECTIVES and not name.startswith("_")))


@functools.cache
def _registry(modules: tuple[str, ...]) -> dict[str, type[Objective]]:
    found: dict[str, type[Objective]] = {}
    sections: dict[str, str] = {}
    for module_name in modules:
        module = importlib.import_module(f"{__name__}.{module_name}")
        cls = getattr(module, "OBJECTIVE", None)
        # A developer's mistake: one line naming the module, raised whenever a spec loads (and by the tests).
        if not (isinstance(cls, type) and issubclass(cls, Objective)) or cls.name != module_name:
            raise TypeError(
                f"{module.__name__}: an objective module must define OBJECTIVE, an Objective subclass "
                f"named {module_name!r}"
            )
        if (cls.section is None) != (cls.config is None):
            raise TypeError(f"{module.__name__}: {cls.__name__} declares section and config together, or neither")
        if cls.section is not None and cls.section in sections:
            raise TypeError(
                f"{module.__name__}: section {cls.section!r} is already the {sections[cls.section]} objective's"
            )
        if cls.section is not None:
            sections[cls.section] = cls.name
        found[cls.name] = cls
    return found


def objectives() -> dict[str, type[Objective]]:
    """Every objective, by name, in module-name order."""
    return _registry(module_names())


def objective_class(name: str) -> type[Objective]:
    return objectives()[name]


def section_owners() -> dict[str, str]:
    """Section key → the objective whose settings it holds (`td` → `verifiable`)."""
    return {cls.section: name for name, cls in objectives().items() if cls.section}


def build_objective(spec: StageSpec, device: "torch.device", earlier_outputs: dict[str, Path]) -> Objective:
    """The objective of `spec`; `earlier_outputs` maps stage name → its final checkpoint dir."""
    return objective_class(spec.objective).build(spec, device, earlier_outputs)


_LAZY = {  # exports that import torch, or that live in one objective's module
    "TrainModule": "_train_module",
    "BaselineObjective": "baseline",
    "CriticObjective": "critic",
    "CriticSection": "critic",
    "VerifiableObjective": "verifiable",
    "TDSection": "verifiable",
    "load_value_head": "verifiable",
    "Rho1Objective": "rho1",
    "Rho1Section": "rho1",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "LOOP_METRICS",
    "VALUE_HEAD_FILE",
    "InputPath",
    "MetricNames",
    "Objective",
    "ObjectiveOutput",
    "build_objective",
    "ce_totals",
    "head_metrics",
    "lazy_module",
    "module_names",
    "objective_class",
    "objectives",
    "per_head_weights",
    "pooled_metrics",
    "section_owners",
    "stat_names",
    *_LAZY,
]
