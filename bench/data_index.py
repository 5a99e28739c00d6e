"""Index + seek/read sampling vs reading everything: build speed, time to first batch, peak memory.

On a generated JSONL (default 1,000,000 Alpaca lines of ~1 KB, half correct, difficulty 0..11) in a
temp dir, the bench times `build_index` (MB/s) and then, each in a fresh process so peak RSS is its
own, draws 50,000 balanced samples (correct_ratio 0.5, seeded) and materialises them:

- ours:  `DatasetIndex.load` → `draw_indices` → `JsonlSamples` (seek + read of the chosen lines);
- (a):   `json.loads` of every line into a list, then the same balanced draw from that list;
- (b):   Hugging Face `datasets.load_dataset("json")` into a fresh (cold) cache dir, the draw from its
         `is_correct` column, then `select(rows)`. `datasets` is not a project dependency: it is
         installed into a throwaway venv under /tmp on first use (`--skip-hf` leaves (b) out).

Time to first batch = from process start of the measurement (after imports) to the first 32 records
in hand; the OS page cache is warm for all three (the file was just written and indexed). The three
run `--rounds` times in alternating order (ours, a, b, then b, a, ours, …; (b)'s cache emptied every
time) and the table shows medians, so a busy spell on a shared machine does not favour one side.

    .venv/bin/python bench/data_index.py                 # full size: ~1 GB file, several minutes
    .venv/bin/python bench/data_index.py --lines 100000  # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HF_VENV = Path("/tmp/wmtp-bench-hf-venv")
MB = 1e6


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--line-bytes", type=int, default=1000, help="approximate bytes per JSONL line")
    parser.add_argument("--samples", type=int, default=50_000, help="balanced samples to draw and materialise")
    parser.add_argument("--batch-size", type=int, default=32, help="records in the first batch")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where the JSONL goes (default: a temp dir, removed)"
    )
    parser.add_argument("--skip-hf", action="store_true", help="leave out (b) Hugging Face datasets")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3, help="measurement rounds, order alternated; medians reported")
    parser.add_argument("--measure", choices=["ours", "jsonloads", "hf"], help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- the data


def generate_jsonl(path: Path, lines: int, line_bytes: int, seed: int) -> None:
    """Alpaca lines with varied text (from a pool of random words) padded to about `line_bytes`."""
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(4000)]
    chunks = [" ".join(rng.choices(words, k=12)) for _ in range(20000)]
    with open(path, "w", encoding="utf-8") as handle:
        buffer = []
        for i in range(lines):
            instruction = " ".join(chunks[(i * 7 + j) % len(chunks)] for j in range(4))
            body_chars = max(0, line_bytes - len(instruction) - 200)
            output = ""
            j = 0
            while len(output) < body_chars:
                output += chunks[(i * 13 + j) % len(chunks)] + "\n"
                j += 1
            record = {
                "instruction": instruction,
                "input": "",
                "output": output[:body_chars],
                "task_id": f"problem{i // 8}_{'correct' if i % 2 == 0 else 'incorrect'}_{i % 8}",
                "is_correct": rng.random() < 0.5,
                "metadata": {"source": "bench", "difficulty": rng.randint(0, 11), "has_tests": True},
            }
            buffer.append(json.dumps(record))
            if len(buffer) == 10000:
                handle.write("\n".join(buffer) + "\n")
                buffer = []
        if buffer:
            handle.write("\n".join(buffer) + "\n")


# ----------------------------------------------------------------------------- measurements (child processes)


def rss_mb() -> float:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB  # Linux reports KiB


def balanced_rows(is_correct, n: int, seed: int):
    """The same draw for (a) and (b): n/2 correct and n/2 incorrect rows, shuffled (numpy)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    is_correct = np.asarray(is_correct, dtype=bool)
    correct, incorrect = np.flatnonzero(is_correct), np.flatnonzero(~is_correct)
    chosen = np.concatenate([rng.permutation(correct)[: n // 2], rng.permutation(incorrect)[: n - n // 2]])
    return rng.permutation(chosen)


def measure_ours(args) -> dict:
    sys.path.insert(0, str(REPO))
    from wmtp.data.dataset import JsonlSamples
    from wmtp.data.index import DatasetIndex
    from wmtp.data.sampling import SamplingSpec, draw_indices

    base = rss_mb()
    start = time.perf_counter()
    index = DatasetIndex.load(args.file)
    rows = draw_indices(index, SamplingSpec(strategy="balanced", n_samples=args.samples, correct_ratio=0.5), args.seed)
    dataset = JsonlSamples(args.file, rows, index=index)
    first = [dataset[i] for i in range(args.batch_size)]
    first_batch = time.perf_counter() - start
    records = first + [dataset[i] for i in range(args.batch_size, len(dataset))]
    total = time.perf_counter() - start
    assert sum(r["is_correct"] for r in records) == args.samples // 2
    return {
        "first_batch_s": first_batch,
        "total_s": total,
        "peak_rss_mb": peak_rss_mb(),
        "base_rss_mb": base,
        "index_bytes_per_sample": index.nbytes / len(index),
    }


def measure_jsonloads(args) -> dict:
    base = rss_mb()
    start = time.perf_counter()
    with open(args.file, encoding="utf-8") as handle:
        everything = [json.loads(line) for line in handle]
    rows = balanced_rows([r["is_correct"] for r in everything], args.samples, args.seed)
    records = [everything[int(i)] for i in rows[: args.batch_size]]
    first_batch = time.perf_counter() - start
    records += [everything[int(i)] for i in rows[args.batch_size :]]
    total = time.perf_counter() - start
    assert sum(r["is_correct"] for r in records) == args.samples // 2
    return {"first_batch_s": first_batch, "total_s": total, "peak_rss_mb": peak_rss_mb(), "base_rss_mb": base}


def measure_hf(args) -> dict:
    import datasets

    datasets.disable_progress_bars()
    base = rss_mb()
    start = time.perf_counter()
    table = datasets.load_dataset("json", data_files=str(args.file), split="train", cache_dir=str(args.cache_dir))
    rows = balanced_rows(table["is_correct"], args.samples, args.seed)
    chosen = table.select(rows)
    records = chosen[: args.batch_size]  # columnar dict of the first batch
    first_batch = time.perf_counter() - start
    records = list(chosen)
    total = time.perf_counter() - start
    assert sum(r["is_correct"] for r in records) == args.samples // 2
    return {
        "first_batch_s": first_batch,
        "total_s": total,
        "peak_rss_mb": peak_rss_mb(),
        "base_rss_mb": base,
        "datasets_version": datasets.__version__,
    }


# ----------------------------------------------------------------------------- orchestration


def ensure_hf_python() -> Path | None:
    """Python of a throwaway venv with `datasets`, created on first use; None (with a note) if it fails."""
    python = HF_VENV / "bin" / "python"
    if python.exists() and subprocess.run([str(python), "-c", "import datasets"], capture_output=True).returncode == 0:
        return python
    print(f"installing datasets into {HF_VENV} (throwaway) …", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(HF_VENV)], check=True)
        subprocess.run([str(HF_VENV / "bin" / "pip"), "install", "--quiet", "datasets"], check=True)
    except (subprocess.CalledProcessError, OSError) as exc:
        print(f"note: (b) skipped — could not install datasets ({exc})", flush=True)
        return None
    return python


def run_child(python: Path, mode: str, args, extra: list[str] | None = None) -> dict:
    command = [
        str(python),
        str(Path(__file__).resolve()),
        "--measure",
        mode,
        "--file",
        str(args.file),
        "--samples",
        str(args.samples),
        "--batch-size",
        str(args.batch_size),
        "--seed",
        str(args.seed),
        *(extra or []),
    ]
    out = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    if out.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_result(values: list[dict]) -> dict:
    """Field-wise median of one contender's rounds (numbers); other fields from the first round."""
    import statistics

    return {
        k: statistics.median(v[k] for v in values) if isinstance(values[0][k], (int, float)) else values[0][k]
        for k in values[0]
    }


def print_table(results: dict, build: dict) -> None:
    print(
        f"\nindex build: {build['mb']:.0f} MB, {build['lines']:,} lines in {build['seconds']:.1f} s → "
        f"{build['mb'] / build['seconds']:.0f} MB/s; "
        f"index {build['index_bytes'] / build['lines']:.1f} bytes/sample on disk, "
        f"{results['ours']['index_bytes_per_sample']:.0f} bytes/sample resident"
    )
    names = [("ours", "ours"), ("jsonloads", "(a) json.loads"), ("hf", "(b) HF datasets")]
    present = [(key, label) for key, label in names if key in results]
    rows = [
        ("time to first batch (s)", lambda r: r["first_batch_s"]),
        (f"time to {results['ours']['samples']:,} samples (s)", lambda r: r["total_s"]),
        ("peak RSS (MB)", lambda r: r["peak_rss_mb"]),
        ("peak RSS above imports (MB)", lambda r: r["peak_rss_mb"] - r["base_rss_mb"]),
    ]
    header = (
        f"{'':32}"
        + "".join(f"{label:>18}" for _, label in present)
        + "".join(f"{label.split()[0] + ' / ours':>16}" for key, label in present if key != "ours")
    )
    print(header)
    for title, value in rows:
        cells = "".join(f"{value(results[key]):>18.2f}" for key, _ in present)
        ratios = "".join(
            f"{value(results[key]) / max(value(results['ours']), 1e-9):>15.1f}×" for key, _ in present if key != "ours"
        )
        print(f"{title:32}{cells}{ratios}")
    ours = results["ours"]
    cold = build["seconds"] + ours["first_batch_s"]
    print(
        f"{'ours incl. index build (cold)':32}{cold:>18.2f}  s to first batch"
        + (f"; (b)/ours {results['hf']['first_batch_s'] / cold:.1f}×" if "hf" in results else "")
    )
    if "hf" in results:
        print(f"(b) datasets {results['hf']['datasets_version']}")


def main() -> None:
    args = parse_args()
    if args.measure:
        measure = {"ours": measure_ours, "jsonloads": measure_jsonloads, "hf": measure_hf}[args.measure]
        print(json.dumps(measure(args)))
        return
    sys.path.insert(0, str(REPO))
    from wmtp.data.index import build_index, index_path

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="wmtp-bench-data-"))
    workdir.mkdir(parents=True, exist_ok=True)
    args.file = workdir / "bench.jsonl"
    try:
        print(f"writing {args.lines:,} lines to {args.file} …", flush=True)
        generate_jsonl(args.file, args.lines, args.line_bytes, args.seed)
        size = args.file.stat().st_size
        print("building the index …", flush=True)
        started = time.perf_counter()
        build_index(args.file)
        build = {
            "seconds": time.perf_counter() - started,
            "mb": size / MB,
            "lines": args.lines,
            "index_bytes": index_path(args.file).stat().st_size,
        }
        hf_python = None if args.skip_hf else ensure_hf_python()
        contenders = {"ours": Path(sys.executable), "jsonloads": Path(sys.executable)}
        if hf_python is not None:
            contenders["hf"] = hf_python
        elif args.skip_hf:
            print("note: (b) skipped (--skip-hf)")
        labels = {
            "ours": "ours",
            "jsonloads": "(a) json.loads of every line",
            "hf": "(b) datasets.load_dataset('json'), cold cache",
        }
        runs: dict[str, list[dict]] = {key: [] for key in contenders}
        for rnd in range(args.rounds):
            # Alternate the order (ours, a, b / b, a, ours / …) so a busy spell on a shared machine hits all alike.
            for key in list(contenders) if rnd % 2 == 0 else list(contenders)[::-1]:
                print(f"round {rnd + 1}/{args.rounds}: {labels[key]} …", flush=True)
                extra = None
                if key == "hf":
                    cache = workdir / "hf-cache"
                    shutil.rmtree(cache, ignore_errors=True)  # cold every time
                    extra = ["--cache-dir", str(cache)]
                runs[key].append(run_child(contenders[key], key, args, extra))
        results = {key: median_result(values) for key, values in runs.items()}
        results["ours"]["samples"] = args.samples
        if args.rounds > 1:
            print(
                f"(medians over {args.rounds} rounds; first-batch seconds per round: "
                + "; ".join(
                    f"{key} " + ", ".join(f"{r['first_batch_s']:.2f}" for r in values) for key, values in runs.items()
                )
                + ")"
            )
        print_table(results, build)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
