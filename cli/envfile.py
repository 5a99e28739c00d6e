"""`--env-file`: KEY=VALUE lines loaded into the environment; values are never printed or saved."""

from __future__ import annotations

import os
from pathlib import Path

from wmtp.errors import WmtpError
from wmtp_cli.secrets import refuse_secret_overrides, remember_env_file_values

__all__ = ["declared_secret_names", "load_env_file", "read_env_file", "refuse_secret_overrides"]


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a dotenv-style file: `KEY=VALUE`, optional `export `, quotes stripped, `#` comments."""
    if not path.is_file():
        raise WmtpError(f"{path}: env file not found")
    values = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        if not sep or not key.strip().replace("_", "").isalnum():
            raise WmtpError(f"{path}:{number}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    remember_env_file_values(values)  # never to be quoted back by an error message
    return values


def load_env_file(path: Path | None) -> list[str]:
    """Export the file's variables (existing environment wins); returns the names set."""
    if path is None:
        return []
    names = []
    for key, value in read_env_file(path).items():
        if key not in os.environ:
            os.environ[key] = value
            names.append(key)
    return names


def declared_secret_names(envs: list[dict]) -> list[str]:
    """The names listed under `env.secrets` in any of the given `env` sections (one per stage)."""
    names: list[str] = []
    for env in envs:
        listed = env.get("secrets") or []
        names += [name for name in (listed if isinstance(listed, list) else []) if isinstance(name, str)]
    return list(dict.fromkeys(names))
