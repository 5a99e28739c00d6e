"""`--env-file`: KEY=VALUE lines loaded into the environment; values are never printed or saved."""

from __future__ import annotations

import os
from pathlib import Path

from wmtp.errors import WmtpError


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


# A secret shorter than this could match ordinary text by chance; real tokens are longer.
MIN_SCANNED_SECRET_LENGTH = 8


def secret_values(names: list[str], env_values: dict[str, str]) -> dict[str, str]:
    """The credentials a command must never write: the values of the `env.secrets` names in the
    environment, and every value of its --env-file (by variable name; empty ones left out)."""
    values = {name: os.environ.get(name) or "" for name in names} | env_values
    return {name: value for name, value in values.items() if value}


def declared_secret_names(envs: list[dict]) -> list[str]:
    """The names listed under `env.secrets` in any of the given `env` sections (one per stage)."""
    names: list[str] = []
    for env in envs:
        listed = env.get("secrets") or []
        names += [name for name in (listed if isinstance(listed, list) else []) if isinstance(name, str)]
    return list(dict.fromkeys(names))


def refuse_secret_overrides(overrides: list[str], names: list[str], env_values: dict[str, str]) -> None:
    """Refuse a `--set KEY=VALUE` whose value is a secret's value (any length, for the declared `names`)
    or contains one (long enough not to match by chance): it would be written into spec.yaml, MLflow
    and the logs. The message names the key and the secret, never the value."""
    secrets = secret_values(names, env_values)
    for text in overrides:
        key, _, value = text.partition("=")
        value = value.strip()
        for name, secret in secrets.items():
            if (name in names and value == secret) or (len(secret) >= MIN_SCANNED_SECRET_LENGTH and secret in value):
                raise WmtpError(f"--set {key.strip()}: holds the value of secret {name}; secrets are referenced "
                                "by name (env.secrets), never written — remove it from --set")
