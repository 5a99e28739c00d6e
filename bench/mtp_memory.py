"""Peak memory of one MTP training step: memory-efficient n=4 vs naive n=4 vs n=1 (vocab 32000).

Every configuration has the same trunk depth and dims; n=4 adds three head blocks. One step =
forward + loss + backward from `grad = None` (the gradients' own memory counts; no optimizer state).
Each configuration runs in a fresh subprocess so that no allocator cache or earlier peak leaks
between them. Two measures on CPU, each in its own subprocess:

* tensor peak — torch's profiler with `profile_memory=True` records every allocation and free of the
  CPU allocator with a running "Total Allocated" counter; its maximum during the step is the peak of
  live tensor bytes above what existed before (model weights and batch). Exact and repeatable.
* RSS peak — `ru_maxrss` after the step minus the RSS after building the model and batch. What the
  OS sees, including malloc caching and fragmentation; noisier, a cross-check.

On CUDA: `torch.cuda.max_memory_allocated()` minus the allocation before the step.

    .venv/bin/python bench/mtp_memory.py                  # ~1 min on 2 CPU cores
    .venv/bin/python bench/mtp_memory.py --device cuda --dim 2048 --seq 2048
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from wmtp.model import IGNORE_INDEX, ModelArgs, Transformer, mtp_loss, mtp_loss_memory_efficient  # noqa: E402
from wmtp.model.mtp_loss import mtp_loss_recomputed  # noqa: E402

# name → (number of heads, loss schedule)
CONFIGS = {
    "n=1": (1, "naive"),
    "memory-efficient n=1": (1, "memory_efficient"),
    "naive n=4": (4, "naive"),
    "memory-efficient n=4": (4, "memory_efficient"),
    "recomputed n=4 (training loop)": (4, "recomputed"),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--trunk-layers", type=int, default=7, help="shared trunk blocks (n_layers - n_future)")
    parser.add_argument("--n-heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of: " + ", ".join(CONFIGS))
    parser.add_argument("--worker", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--measure", choices=["tensor", "rss", "cuda"], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def build(opts: argparse.Namespace, n_future: int, device: torch.device):
    """Model with `trunk_layers` shared blocks and `n_future` heads, plus a batch with MTP labels."""
    args = ModelArgs(
        dim=opts.dim,
        n_layers=opts.trunk_layers + n_future,
        n_heads=opts.n_heads,
        vocab_size=opts.vocab,
        n_future_tokens=n_future,
        max_seq_len=opts.seq,
    )
    model = Transformer(args)
    model.init_weights(opts.seed)
    model = model.to(device).train()
    gen = torch.Generator().manual_seed(opts.seed)
    tokens_BS = torch.randint(0, opts.vocab, (opts.batch, opts.seq), generator=gen)
    labels_BSH = torch.full((opts.batch, opts.seq, n_future), IGNORE_INDEX)
    for k in range(n_future):  # head k at position t predicts token t+k+1
        labels_BSH[:, : opts.seq - k - 1, k] = tokens_BS[:, k + 1 :]
    return model, tokens_BS.to(device), labels_BSH.to(device)


def training_step(model, tokens_BS, labels_BSH, schedule: str, autocast) -> float:
    """Forward + loss + backward with the given schedule; returns the loss."""
    with autocast():
        if schedule == "naive":
            loss = mtp_loss(model(tokens_BS), labels_BSH).total
        elif schedule == "recomputed":
            loss = mtp_loss_recomputed(model, model.forward_trunk(tokens_BS), labels_BSH).total
        else:  # runs its own backward, head by head
            return mtp_loss_memory_efficient(model, tokens_BS, labels_BSH).total.item()
    loss.backward()
    return loss.item()


def peak_tensor_bytes_from_profile(run_step) -> int:
    """Peak of live CPU tensor bytes allocated during `run_step()` (profiler's running counter)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run_step()
    with tempfile.TemporaryDirectory() as tmp:
        trace_path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(trace_path)
        events = json.loads(Path(trace_path).read_text())["traceEvents"]
    totals = [
        e["args"]["Total Allocated"]
        for e in events
        if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0
    ]
    return max([0, *totals])


def rss_bytes() -> int:
    """Current resident set size (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(opts: argparse.Namespace) -> None:
    """Measure one configuration in this (fresh) process and print one JSON line."""
    n_future, schedule = CONFIGS[opts.worker]
    device = torch.device(opts.device)
    model, tokens_BS, labels_BSH = build(opts, n_future, device)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else _no_autocast
    result = {"config": opts.worker, "measure": opts.measure}
    if opts.measure == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        result["loss"] = training_step(model, tokens_BS, labels_BSH, schedule, autocast)
        result["peak_bytes"] = torch.cuda.max_memory_allocated() - base
    elif opts.measure == "tensor":
        losses = []
        result["peak_bytes"] = peak_tensor_bytes_from_profile(
            lambda: losses.append(training_step(model, tokens_BS, labels_BSH, schedule, autocast))
        )
        result["loss"] = losses[0]
    else:
        base = rss_bytes()
        result["loss"] = training_step(model, tokens_BS, labels_BSH, schedule, autocast)
        result["peak_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base  # KiB on Linux
    result["param_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps(result))


def _no_autocast():
    import contextlib

    return contextlib.nullcontext()


def run_worker(opts: argparse.Namespace, config: str, measure: str) -> dict:
    """One configuration in a fresh interpreter; returns its JSON result."""
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        config,
        "--measure",
        measure,
        "--dim",
        str(opts.dim),
        "--trunk-layers",
        str(opts.trunk_layers),
        "--n-heads",
        str(opts.n_heads),
        "--vocab",
        str(opts.vocab),
        "--seq",
        str(opts.seq),
        "--batch",
        str(opts.batch),
        "--device",
        opts.device,
        "--seed",
        str(opts.seed),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"worker {config}/{measure} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_table(results: dict[str, dict[str, dict]], measures: list[str]) -> None:
    labels = {"tensor": "tensor peak", "rss": "RSS peak", "cuda": "max_memory_allocated"}
    header = "| config | loss | " + " | ".join(f"{labels[m]} (MB) | × n=1" for m in measures) + " |"
    print("\n" + header + "\n|---|---:|" + "---:|---:|" * len(measures))
    base = results["n=1"]
    for config, by_measure in results.items():
        cells = []
        for m in measures:
            peak = by_measure[m]["peak_bytes"]
            cells.append(f"{peak / 2**20:,.0f} | {peak / base[m]['peak_bytes']:.2f}")
        loss = next(iter(by_measure.values()))["loss"]
        print(f"| {config} | {loss:.4f} | " + " | ".join(cells) + " |")


def main(argv=None) -> None:
    opts = parse_args(argv)
    if opts.worker:
        return worker(opts)
    measures = ["cuda"] if opts.device.startswith("cuda") else ["tensor", "rss"]
    print(
        f"device {opts.device}, torch {torch.__version__}, dim {opts.dim}, trunk {opts.trunk_layers} blocks, "
        f"heads {opts.n_heads}, vocab {opts.vocab}, batch {opts.batch} x seq {opts.seq}; "
        f"one step = fwd + loss + bwd from grad=None; peak above weights + batch"
    )
    configs = ["n=1", *(c for c in opts.configs.split(",") if c != "n=1")]  # n=1 is the reference row
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown:
        raise SystemExit(f"--configs: unknown {unknown}; expected some of {list(CONFIGS)}")
    results = {config: {m: run_worker(opts, config, m) for m in measures} for config in configs}
    for config, by_measure in results.items():
        params_mb = next(iter(by_measure.values()))["param_bytes"] / 2**20
        print(f"  {config}: weights {params_mb:,.0f} MB")
    print_table(results, measures)


if __name__ == "__main__":
    main()
