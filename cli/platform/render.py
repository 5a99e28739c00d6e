"""Jinja rendering of job manifests: StrictUndefined, every value quoted as a JSON (= YAML) literal."""

from __future__ import annotations

import json
import shlex
from typing import Any

import jinja2
import yaml

from wmtp.assets import asset_dir
from wmtp.errors import WmtpError
from wmtp_cli.platform.context import JobContext


def yaml_value(value: Any) -> str:
    """Any scalar or list as a JSON literal, which YAML reads back unchanged.

    Quoting every interpolated value this way means a name holding `:`, `#`, `{`, a newline or a
    quote stays one string value and can never add keys to the manifest. ASCII-only output keeps
    YAML and JSON agreeing on line breaks (U+2028 and friends are escaped).
    """
    return json.dumps(value, ensure_ascii=True, default=undefined_or_unsupported)


def undefined_or_unsupported(value: Any) -> Any:
    """json.dumps hook: an undefined template value raises its own UndefinedError (naming it)."""
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined raises UndefinedError here
    raise TypeError(f"cannot render a {type(value).__name__} into a manifest")


def template_environment(folder: str, filters: dict[str, Any] | None = None) -> jinja2.Environment:
    """A Jinja environment over one shipped template folder; undefined names are errors. `filters`
    replace or add to the shared ones (a target's own quoting, e.g. compose's `$$`)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(asset_dir(folder))),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["yaml_value"] = yaml_value
    env.filters["shell_join"] = shlex.join
    env.filters.update(filters or {})
    return env


def render_manifest(
    where: str, context: JobContext, extra: dict[str, Any] | None = None, filters: dict[str, Any] | None = None
) -> str:
    """Render the template `where` (`folder/file.j2` among the shipped assets) with `context`, plus a
    target's `extra` values and `filters`."""
    folder, name = where.split("/", 1)
    try:
        template = template_environment(folder, filters).get_template(name)
        text = template.render(**context.as_template_vars(), **(extra or {}))
    except jinja2.TemplateNotFound:
        raise WmtpError(f"{where}: template not found in {asset_dir(folder)}") from None
    except jinja2.TemplateSyntaxError as exc:
        raise WmtpError(f"{where}:{exc.lineno}: template syntax error: {exc.message}") from None
    except jinja2.UndefinedError as exc:
        raise WmtpError(f"{where}: undefined template value: {exc.message}") from None
    parse_manifest(text, where)
    return text


def parse_manifest(text: str, where: str) -> Any:
    """The rendered YAML as data; a manifest that does not parse is one line naming file:line."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise WmtpError(f"rendered {where}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
