"""The `wmtp` command: one Typer app, one module per command group, commands stay thin."""

from __future__ import annotations

from typing import Optional

import typer

from wmtp import __version__
from wmtp_cli import compare, data, image, jobs, model, submit, sync, train
from wmtp_cli import eval as eval_cmds
from wmtp_cli.common import WmtpTyper

app = WmtpTyper(help="Weighted multi-token prediction: train, evaluate and submit experiments.")
app.add_typer(model.app, name="model")
app.add_typer(data.app, name="data")
app.add_typer(eval_cmds.app, name="eval")
app.add_typer(jobs.app, name="jobs")
sync.register(app)
app.command("train")(train.train)
submit.register(app)
image.register(app)
compare.register(app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"wmtp {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Weighted multi-token prediction on code LLMs."""


if __name__ == "__main__":
    app()
