"""The registry of job targets: name → Target, found in wmtp_cli/platform/plugins/, in module-name order.

Every module there defines `TARGET` (see `target.py`), named as the module is (`local_docker.py` →
`local-docker`); nothing else lists the targets. The `--target` choices, rendering and submitting, the
targets table in docs/platform.md (`python -m wmtp_cli.platform.registry` prints it; a test checks the
file against it) and the tests' parametrization all come from here.

`names()` reads the folder without importing the modules (their settings models load pydantic), so
that every command's help can list the choices without paying for it.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import TYPE_CHECKING

from wmtp.errors import WmtpError

if TYPE_CHECKING:  # imported in targets(): it loads pydantic, which names() must not
    from wmtp_cli.platform.target import Target

PLUGIN_PACKAGE = "wmtp_cli.platform.plugins"
DEFAULT_TARGET = "local"  # `wmtp submit` without --target runs on this machine
# Targets whose jobs run in the foreground (`tracks_jobs = False`): status / logs / cancel / ls refuse them, so
# those commands' --target choices leave them out. Named here because names() imports no target module.
FOREGROUND = ("local",)


@functools.cache
def module_names() -> tuple[str, ...]:
    """The target modules in plugins/, sorted (found without importing them)."""
    package = importlib.import_module(PLUGIN_PACKAGE)
    return tuple(sorted(info.name for info in pkgutil.iter_modules(package.__path__)))


def names() -> list[str]:
    """The --target choices, in order: the module names, `_` written `-`."""
    return [module.replace("_", "-") for module in module_names()]


def tracked_names() -> list[str]:
    """The --target choices of status / logs / cancel / ls: the targets whose jobs those commands find."""
    return [name for name in names() if name not in FOREGROUND]


@functools.cache
def targets() -> dict[str, Target]:
    """Every target, by name, in order."""
    from wmtp_cli.platform.target import Target

    found: dict[str, Target] = {}
    for module_name, name in zip(module_names(), names()):
        module = importlib.import_module(f"{PLUGIN_PACKAGE}.{module_name}")
        target = getattr(module, "TARGET", None)
        if not isinstance(target, Target) or target.name != name:  # a developer's mistake, caught by the tests
            raise TypeError(f"{module.__name__}: a target module must define TARGET, a Target named {name!r}")
        found[name] = target
    return found


def get_target(name: str) -> Target:
    """The target called `name`, else one line naming the choices."""
    if name not in names():
        raise WmtpError(f"--target {name!r}: expected one of {', '.join(names())}")
    return targets()[name]


def markdown_table() -> list[str]:
    """docs/platform.md's targets table, one line per target (the first line is the header)."""
    lines = ["| target | what it does | needs |", "|---|---|---|"]
    for target in targets().values():
        label = f"`{target.name}`" + (" (default)" if target.name == DEFAULT_TARGET else "")
        lines.append(f"| {label} | {target.summary} | {target.needs} |")
    return lines


if __name__ == "__main__":  # paste into docs/platform.md's "Targets" after adding or changing a target
    print("\n".join(markdown_table()))
