"""`wmtp compare`: a table and overlaid plots of several stages, from run dirs or an MLflow experiment."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer


def compare(
    paths: Optional[List[Path]] = typer.Argument(None, help="Run dirs (every stage in them) or stage dirs."),
    out: Optional[Path] = typer.Option(None, "--out", help="Report dir (default storage/compare/compare-<time>)."),
    mlflow: Optional[str] = typer.Option(
        None, "--mlflow", help="Read the training runs of this MLflow experiment instead."
    ),
    filter_string: str = typer.Option(
        "", "--filter", help="MLflow search filter, e.g. \"tags.stage = 'rho1'\" (with --mlflow)."
    ),
    tracking_uri: Optional[str] = typer.Option(
        None, "--tracking-uri", help="MLflow server (default $MLFLOW_TRACKING_URI, else storage/mlflow/mlflow.db)."
    ),
) -> None:
    """Compare stages: steps, tokens seen, best/final val/ce (mean and per head), val/loss, pass@k with its
    95 % interval, tokens/s, early stopping. Writes report.md, a self-contained report.html and compare.csv."""
    from wmtp.compare import CompareError, read_mlflow, read_paths, text_table, write_report

    if bool(paths) == bool(mlflow):
        raise CompareError("give run / stage dirs or --mlflow EXPERIMENT (one of the two)")
    if filter_string and not mlflow:
        raise CompareError("--filter needs --mlflow EXPERIMENT")
    stages = read_mlflow(mlflow, filter_string, tracking_uri) if mlflow else read_paths(list(paths))
    report = write_report(stages, out or Path("storage/compare") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}")
    typer.echo(text_table(report.rows))
    typer.echo(f"report: {report.markdown}")
    typer.echo(f"html:   {report.html}")
    typer.echo(f"csv:    {report.csv}")


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)
