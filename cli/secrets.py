"""Credentials a command must never write or print: which values count, where they may hide, how
they are refused (in `--set`, in a rendered manifest) and scrubbed (from error messages).

A credential is the value of an environment variable named like one (`*_TOKEN`, `*_PASSWORD`, `*_KEY`,
`*SECRET*`), of a name listed in `env.secrets`, any value of an `--env-file`, or a token / password of
the current kubeconfig's users. Checks compare *decoded* text (the parsed manifest's strings, a
`--set` value as YAML reads it, shell words) so that quoting or escaping cannot hide one.

Imports nothing heavy: every CLI error passes through `scrub`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional

from wmtp.errors import WmtpError

# A credential shorter than this could match ordinary text by chance (a port, a step count, a word of an
# error message), so substring checks and scrubbing skip it; real tokens and passwords are longer.
MIN_SCANNED_SECRET_LENGTH = 8
# A credential-named variable's value is refused as a *whole* --set value from this length on: shorter
# values of such variables are flags ("1", "yes"), and refusing them would refuse ordinary overrides.
MIN_EXACT_SECRET_LENGTH = 4
CREDENTIAL_NAME = re.compile(r"(?:.*_TOKEN|.*_PASSWORD|.*_KEY|.*SECRET.*)", re.IGNORECASE)
REFERENCE_HINT = "secrets are referenced by name (env.secrets), never written"

# Every --env-file value this process has read: error messages are scrubbed of them too.
_env_file_values: set[str] = set()


def remember_env_file_values(values: Mapping[str, str]) -> None:
    _env_file_values.update(value for value in values.values() if value)


def is_credential_name(name: str) -> bool:
    return bool(CREDENTIAL_NAME.fullmatch(name))


def kubeconfig_credentials(env_values: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """value → label of the tokens and passwords of the kubeconfig's users (`KUBECONFIG`, from the environment
    or the env file, else ~/.kube/config); the file is only read: no exec plugin runs, nothing goes over the
    network."""
    listed = (env_values or {}).get("KUBECONFIG") or os.environ.get("KUBECONFIG")
    paths = (
        [Path(p).expanduser() for p in listed.split(os.pathsep) if p] if listed else [Path.home() / ".kube" / "config"]
    )
    found: dict[str, str] = {}
    for path in paths:
        try:
            import yaml

            config = yaml.safe_load(path.read_text()) if path.is_file() else None
        except Exception:  # unreadable or not YAML: the k8s client will say so if it is ever used
            continue
        users = config.get("users") if isinstance(config, dict) else None
        for entry in users if isinstance(users, list) else []:
            user = entry.get("user") if isinstance(entry, dict) else None
            if not isinstance(user, dict):
                continue
            who = entry.get("name", "?")
            values = {"token": user.get("token"), "password": user.get("password")}
            provider = user.get("auth-provider")
            provider = provider.get("config") if isinstance(provider, dict) else None
            if isinstance(provider, dict):
                values |= {key: value for key, value in provider.items() if "token" in key or "secret" in key}
            for key, value in values.items():
                if isinstance(value, str) and value:
                    found.setdefault(value, f"the kubeconfig's {key} of user {who}")
    return found


def exact_credentials(names: Iterable[str] = (), env_values: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """value → label of the credentials a whole --set value must not equal: any value of a declared name
    (env.secrets), and values of credential-named variables of MIN_EXACT_SECRET_LENGTH or more, from the
    environment or the env file. Labels name the source (`secret HF_TOKEN`), never the value."""
    env_values = env_values or {}
    found: dict[str, str] = {}
    for name in names:
        for value in (os.environ.get(name), env_values.get(name)):
            if value:
                found.setdefault(value, f"secret {name}")
    for source in (os.environ, env_values):
        for name, value in source.items():
            if is_credential_name(name) and len(value) >= MIN_EXACT_SECRET_LENGTH:
                found.setdefault(value, f"secret {name}")
    return found


def credentials(names: Iterable[str] = (), env_values: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """value → label of every credential long enough to be searched for inside text (see
    MIN_SCANNED_SECRET_LENGTH): credential-named and declared variables, every env-file value, the
    kubeconfig's tokens and passwords."""
    env_values = env_values or {}
    found = exact_credentials(names, env_values)
    for name, value in env_values.items():
        found.setdefault(value, f"secret {name}")
    for value, label in kubeconfig_credentials(env_values).items():
        found.setdefault(value, label)
    return {value: label for value, label in found.items() if len(value) >= MIN_SCANNED_SECRET_LENGTH}


def default_secret_names() -> list[str]:
    """`env.secrets` of the shipped jobs/defaults.yaml ([] when unreadable): what every spec declares
    unless it says otherwise, known before (or without) a spec that loads."""
    try:
        import yaml

        from wmtp.assets import asset_dir

        env = (yaml.safe_load((asset_dir("jobs") / "defaults.yaml").read_text()) or {}).get("env") or {}
    except Exception:
        return []
    listed = env.get("secrets") if isinstance(env, dict) else None
    return [name for name in listed if isinstance(name, str)] if isinstance(listed, list) else []


# ---------------------------------------------------------------- where a value may hide


def written_forms(secret: str) -> set[str]:
    """`secret` as it appears once quoted: raw, Python repr (either quote), JSON (ASCII or not), shell-quoted."""
    forms = {
        secret,
        repr(secret)[1:-1],
        repr(secret + "'\"")[1:-4],
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        secret.encode("unicode_escape").decode("ascii"),
    }
    quoted = shlex.quote(secret)
    if quoted != secret:
        forms.add(quoted[1:-1])
    return {form for form in forms if form}


def decoded_forms(text: str) -> set[str]:
    """What a manifest string means once its reader decodes it: itself, compose's `$$` → `$`, and its
    shell words (the VESSL run command is one shell-quoted string) one by one and joined."""
    forms = {text, text.replace("$$", "$")}
    if any(c in text for c in " \t\n'\"\\"):
        try:
            words = shlex.split(text)
        except ValueError:
            words = []
        forms |= set(words) | {" ".join(words)}
    return forms


def strings_of(document: Any) -> Iterator[str]:
    """Every string of a parsed manifest (keys and values; other scalars as text)."""
    if isinstance(document, dict):
        for key, value in document.items():
            yield from strings_of(key)
            yield from strings_of(value)
    elif isinstance(document, (list, tuple)):
        for item in document:
            yield from strings_of(item)
    elif document is not None:
        yield document if isinstance(document, str) else str(document)


def find_credential(document: Any, secrets: Mapping[str, str]) -> Optional[str]:
    """The label of the first credential (`secrets`: value → label) in a decoded string of `document`."""
    for text in strings_of(document):
        for form in decoded_forms(text):
            for secret, label in secrets.items():
                if secret in form:
                    return label
    return None


def url_userinfo(scheme: str, authority: str) -> Optional[str]:
    """What the authority of a `scheme://` URL carries: a password (`user:pass@`), any user of an http(s)
    URL (`https://TOKEN@host` is how tokens are pasted), else None (an ssh user alone is no secret)."""
    if "@" not in authority:
        return None
    if ":" in authority.rpartition("@")[0]:
        return "user:password@"
    if scheme.lower().endswith(("http", "https")):
        return "user@ or token@"
    return None


_AUTHORITY = re.compile(r"([A-Za-z0-9+.-]*)://([^/?#\s'\"<>\\]*)")


def find_url_credentials(text: str) -> Optional[str]:
    """Credentials in a URL anywhere in `text` (not only a URL that is the whole value): see url_userinfo."""
    for match in _AUTHORITY.finditer(text):
        found = url_userinfo(match.group(1), match.group(2))
        if found:
            return found
    return None


# ---------------------------------------------------------------- refusals and scrubbing


def scrub(text: str, names: Iterable[str] = (), env_values: Optional[Mapping[str, str]] = None) -> str:
    """`text` with every known credential, in any quoted form, replaced by `***` (for error messages)."""
    names = [*names, *default_secret_names()]
    secrets = set(credentials(names, env_values))
    secrets |= {value for value in _env_file_values if len(value) >= MIN_SCANNED_SECRET_LENGTH}
    forms = {form for secret in secrets for form in written_forms(secret)}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, "***")
    return text


def refuse_secret_overrides(overrides: list[str], names: Iterable[str], env_values: Mapping[str, str]) -> None:
    """Refuse a `--set KEY=VALUE` whose value is a credential (see exact_credentials) or whose text
    contains one, as written or as YAML decodes it: it would be written into spec.yaml, MLflow, the
    logs or a manifest. Runs before the spec is read, so no spec error can quote it back. The message
    names the key (scrubbed) and the secret, never the value."""
    names = list(names) + default_secret_names()
    exact, scanned = exact_credentials(names, env_values), credentials(names, env_values)
    for text in overrides:
        key, _, value = text.partition("=")
        decoded = yaml_value_of(value)
        parts = key.strip().split(".")
        # `--set SECRET=1`: a key part (from MIN_EXACT_SECRET_LENGTH on: a short username could be `lr`)
        label = next((exact[part] for part in parts if part in exact and len(part) >= MIN_EXACT_SECRET_LENGTH), None)
        label = label or exact.get(value.strip()) or (exact.get(decoded) if isinstance(decoded, str) else None)
        label = label or find_credential([text, decoded], scanned)
        if label:
            shown = scrub(".".join("***" if exact.get(part) == label else part for part in parts), names, env_values)
            raise WmtpError(f"--set {shown}: holds the value of {label}; {REFERENCE_HINT} — remove it from --set")


def yaml_value_of(raw: str) -> Any:
    """A --set value as the spec loader reads it (YAML), so an escaped credential is seen decoded."""
    if not raw.strip():
        return ""
    try:
        import yaml

        return yaml.safe_load(raw)
    except Exception:
        return raw


def refuse_manifest_credentials(document: Any, names: Iterable[str], env_values: Mapping[str, str]) -> None:
    """Last line of defence: no decoded string of the parsed manifest (for `local`, its argv) may contain a
    credential, or a URL carrying one."""
    label = find_credential(document, credentials(names, env_values))
    if label:
        raise WmtpError(
            f"the manifest would contain the value of {label}; {REFERENCE_HINT} — remove it "
            "(from --set, --name or the spec)"
        )
    for text in strings_of(document):
        found = next(filter(None, map(find_url_credentials, decoded_forms(text))), None)
        if found:
            raise WmtpError(
                f"the manifest would contain a URL with credentials ({found}) in plain text; pass "
                "them as secrets (env.secrets) instead"
            )


def escape_compose(value: Any) -> Any:
    """`value` with every `$` of its strings doubled: compose substitutes `${NAME}` / `$NAME` from the
    shell that runs it in *any* value, so a literal `$` is written `$$` (compose's own escape)."""
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, dict):
        return {escape_compose(key): escape_compose(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [escape_compose(item) for item in value]
    return value
