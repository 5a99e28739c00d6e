"""Shared CLI plumbing: a Typer app whose commands turn `WmtpError` into one line and exit 2."""

from __future__ import annotations

import functools
import sys

import typer

from wmtp.errors import WmtpError
from wmtp_cli.secrets import scrub

EXIT_BAD_INPUT = 2


def report_bad_input(message: str) -> None:
    typer.secho(f"error: {scrub(message)}", err=True, fg=typer.colors.RED)  # never a credential's value


class WmtpTyper(typer.Typer):
    """Typer app for wmtp: bad input is reported as one line (no traceback), exit status 2."""

    def __init__(self, **kwargs):
        kwargs.setdefault("no_args_is_help", True)
        kwargs.setdefault("pretty_exceptions_enable", False)
        kwargs.setdefault("context_settings", {"help_option_names": ["-h", "--help"]})
        super().__init__(**kwargs)

    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)

        def decorator(func):
            @functools.wraps(func)
            def wrapper(*f_args, **f_kwargs):
                try:
                    return func(*f_args, **f_kwargs)
                except WmtpError as exc:
                    report_bad_input(str(exc))
                    raise typer.Exit(EXIT_BAD_INPUT) from None
                except KeyboardInterrupt:
                    typer.echo("interrupted", err=True)
                    sys.exit(130)

            register(wrapper)
            return func

        return decorator
