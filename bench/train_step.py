"""Training-step time: verifiable objective (TD weights + value head) vs baseline, and DDP scaling on CPU.

Both objectives run the step the training loop runs (`wmtp.train.loop.Trainer.optimizer_step`) on
the same model weights and the same synthetic batch:

    window normalizers (num_valid_H, num_response) → module(batch, objective) → loss.backward()
    → clip_grad_norm_(1.0) → AdamW step → zero_grad

- baseline:   `TrainModule(model)` + `BaselineObjective` (uniform MTP cross-entropy, recomputed heads);
- verifiable: `TrainModule(model, ValueHead)` + `VerifiableObjective` (value head on norm(h_trunk), TD
  errors → clipped exp weights on every head's targets, value loss clipped around a frozen stage-1
  head loaded from a value_head.safetensors, exactly as after the critic stage).

The batch is built the way `MTPCollator` builds one: right-padded rows of varying length, a prompt
without labels, labels `[B, S, H]` from `mtp_labels`, `response_mask`, `attention_mask`, `is_correct`.
After warm-up the two alternate (baseline, verifiable, verifiable, baseline, …) so that noise from a
shared machine hits both alike; the table reports medians, tokens/s (attention-mask tokens, as the
loop counts them) and the ratio verifiable / baseline.

Then the DDP sanity figure: the same step under `torchrun --standalone --nproc_per_node=2` (gloo,
`wmtp.distributed.parallelize(..., "ddp")`, each rank its own batch of the same size, normalizers
all-reduced) vs `--nproc_per_node=1`, launches alternated. Three launch kinds (processes x threads per
rank, on C cores): 1 x C (all cores in one process), 2 x C/2 (the same cores split over two ranks, as
torchrun does) and 1 x C/2 (one rank's share). Scaling = global tokens/s with 2 processes / tokens/s
with 1 x C (same cores; on a 2-core CPU ~1-2x is expected) and / 1 x C/2 (per-rank efficiency, ideal
2x). A sanity figure: it checks that DDP works and does not collapse.

    .venv/bin/python bench/train_step.py --threads 1        # ~2-3 min on 2 CPU cores
    .venv/bin/python bench/train_step.py --skip-ddp --reps 12

On a shared, busy machine prefer `--threads 1` for the objective comparison: two OpenMP threads on
two cores that other processes also use stall at every barrier (steps 3-4x slower, paired ratios
anywhere in 0.5-1.7x); one thread keeps the ratio steady. The DDP launches set their own threads.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from wmtp.data.collate import mtp_labels  # noqa: E402
from wmtp.distributed import DistContext, destroy_distributed, init_distributed, parallelize, unwrap  # noqa: E402
from wmtp.model import ModelArgs, Transformer, ValueHead  # noqa: E402
from wmtp.train.config import StageSpec, parse_stage_spec  # noqa: E402
from wmtp.train.loop import window_normalizers  # noqa: E402
from wmtp.train.objectives import VALUE_HEAD_FILE, BaselineObjective, TrainModule, VerifiableObjective  # noqa: E402

OBJECTIVES = ("baseline", "verifiable")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--n-layers", type=int, default=8, help="trunk blocks + one block per head")
    parser.add_argument("--n-heads", type=int, default=8)
    parser.add_argument("--n-kv-heads", type=int, default=4)
    parser.add_argument("--n-future", type=int, default=4, help="MTP heads")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=4, help="rows per step (per rank under DDP)")
    parser.add_argument("--seq", type=int, default=256, help="longest row; others are 60-100%% of it")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per objective")
    parser.add_argument("--reps", type=int, default=8, help="timed steps per objective")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-ddp", action="store_true", help="leave out the DDP scaling figure")
    parser.add_argument("--ddp-objective", choices=OBJECTIVES, default="verifiable")
    parser.add_argument("--ddp-warmup", type=int, default=1, help="untimed steps per DDP launch")
    parser.add_argument("--ddp-steps", type=int, default=3, help="timed steps per DDP launch")
    parser.add_argument(
        "--ddp-rounds", type=int, default=2, help="rounds of launches (1x2, 2x1, 1x1 procs x threads), order alternated"
    )
    parser.add_argument(
        "--ddp-cores",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="cores C shared by the DDP launches (default: this process's CPU affinity)",
    )
    parser.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--value-head", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- model, batch, objectives


def model_args(opts) -> ModelArgs:
    return ModelArgs(
        dim=opts.dim,
        n_layers=opts.n_layers,
        n_heads=opts.n_heads,
        n_kv_heads=opts.n_kv_heads,
        vocab_size=opts.vocab,
        multiple_of=32,
        n_future_tokens=opts.n_future,
        max_seq_len=opts.seq,
    )


def build_model(opts, device) -> Transformer:
    model = Transformer(model_args(opts))
    model.init_weights(opts.seed)
    return model.to(device)


def synthetic_batch(opts, seed: int) -> dict:
    """One batch shaped like `MTPCollator`'s: bos + prompt (no labels) + response (+ eos), right-padded."""
    gen = torch.Generator().manual_seed(seed)
    bsz, seq, pad_id, bos_id = opts.batch, opts.seq, 0, 1
    input_ids = torch.full((bsz, seq), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((bsz, seq), dtype=torch.bool)
    response_mask = torch.zeros((bsz, seq), dtype=torch.bool)
    for b in range(bsz):
        n = seq if b == 0 else int(torch.randint(int(0.6 * seq), seq + 1, (1,), generator=gen))
        prompt = int(torch.randint(max(2, n // 8), max(3, n // 3), (1,), generator=gen))
        input_ids[b, :n] = torch.randint(3, opts.vocab, (n,), generator=gen)
        input_ids[b, 0] = bos_id
        attention_mask[b, :n] = True
        response_mask[b, prompt:n] = True
    return {
        "input_ids": input_ids,
        "labels": mtp_labels(input_ids, response_mask, opts.n_future),
        "attention_mask": attention_mask,
        "response_mask": response_mask,
        "is_correct": (torch.arange(bsz) % 2 == 0).float(),  # half correct, half not
        "task_ids": [f"bench/{seed}/{b}" for b in range(bsz)],
    }


def stage_spec(objective: str, value_head: Path) -> StageSpec:
    td = {"td": {"value_head": str(value_head)}} if objective == "verifiable" else {}
    return parse_stage_spec(
        {
            "experiment": "bench",
            "stage": objective,
            "objective": objective,
            "model": {"path": "unused"},
            "data": {"train": "unused"},
            **td,
        }
    )  # td defaults: β 0.9, w ∈ [0.1, 5], value_clip 0.2


def write_value_head(dim: int, directory: Path, seed: int) -> Path:
    """A stage-1 critic's value head file, as the critic stage leaves it in its checkpoint."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    path = directory / VALUE_HEAD_FILE
    save_file(ValueHead(dim).state_dict(), str(path))
    return path


class Contender:
    """One objective with its module, optimizer and collected step times — the loop's step, verbatim."""

    def __init__(self, name: str, model: Transformer, value_head_file: Path, ctx: DistContext, strategy="none"):
        self.name, self.ctx, self.device = name, ctx, ctx.device
        spec = stage_spec(name, value_head_file)
        if name == "baseline":
            self.objective = BaselineObjective(spec)
            inner = TrainModule(model, None)
        else:
            self.objective = VerifiableObjective(spec)
            torch.manual_seed(spec.train.seed)  # as the Trainer: identical value-head init on every rank
            inner = TrainModule(model, ValueHead(model.args.dim).to(self.device))
        self.objective.prepare(inner, self.device)
        self.module = parallelize(inner, strategy, ctx)
        t = spec.train
        params = self.objective.trainable_parameters(unwrap(self.module))
        self.optimizer = torch.optim.AdamW(
            params, lr=t.lr, betas=t.betas, weight_decay=t.weight_decay, foreach=self.device.type == "cuda"
        )
        self.grad_clip = t.grad_clip
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else None
        self.times: list[float] = []
        self.module.train()

    def step(self, raw_batch: dict) -> float:
        """One optimizer step on one micro-batch; returns the loss."""
        num_valid_H, num_response = window_normalizers([raw_batch], self.ctx, self.device, self.objective)
        batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in raw_batch.items()}
        batch["num_valid_H"], batch["num_response"] = num_valid_H, num_response
        if self.autocast is not None:
            with self.autocast:
                out = self.module(batch, self.objective)
        else:
            out = self.module(batch, self.objective)
        out.loss.backward()
        loss = out.loss.item()
        params = [p for p in self.module.parameters() if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, self.grad_clip if self.grad_clip is not None else float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return loss

    def timed_step(self, raw_batch: dict) -> float:
        start = time.perf_counter()
        loss = self.step(raw_batch)
        self.times.append(time.perf_counter() - start)
        return loss


# ----------------------------------------------------------------------------- verifiable vs baseline


def compare_objectives(opts, value_head_file: Path) -> None:
    device = torch.device(opts.device)
    ctx = DistContext(device=device)
    base_model = build_model(opts, device)
    contenders = [
        Contender("baseline", base_model, value_head_file, ctx),
        Contender("verifiable", copy.deepcopy(base_model), value_head_file, ctx),
    ]
    batch = synthetic_batch(opts, opts.seed)
    tokens = int(batch["attention_mask"].sum())
    n_params = sum(p.numel() for p in base_model.parameters())
    a = base_model.args
    print(
        f"device {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, "
        f"step = normalizers + fwd + bwd + clip + AdamW"
    )
    print(
        f"dim {a.dim}, layers {a.n_layers} ({a.n_trunk_layers} trunk + {a.n_future_tokens} heads), "
        f"heads {a.n_heads}/{a.n_kv_heads} kv, ffn {a.ffn_hidden_dim}, vocab {a.vocab_size}, "
        f"{n_params / 1e6:.1f}M params; batch {opts.batch} x seq {opts.seq} "
        f"({tokens} tokens, {int(batch['response_mask'].sum())} response)"
    )
    losses = {c.name: c.step(batch) for c in contenders}  # first warm-up step: report the initial losses
    print("first-step loss: " + ", ".join(f"{n} {v:.4f}" for n, v in losses.items()))
    for _ in range(opts.warmup - 1):
        for c in contenders:
            c.step(batch)
    for rep in range(opts.reps):
        for c in contenders if rep % 2 == 0 else contenders[::-1]:  # B V V B …
            c.timed_step(batch)
    base, verif = contenders
    print("\n| objective | median step (ms) | tokens/s |\n|---|---:|---:|")
    for c in contenders:
        t = statistics.median(c.times)
        print(f"| {c.name} | {t * 1e3:.1f} | {tokens / t:,.0f} |")
    paired = sorted(v / b for b, v in zip(base.times, verif.times))
    ratio = statistics.median(verif.times) / statistics.median(base.times)
    print(f"\nverifiable / baseline step time (ratio of medians): {ratio:.3f}x")
    print(
        f"paired per-rep ratios: median {statistics.median(paired):.3f}x, "
        f"range {paired[0]:.3f}-{paired[-1]:.3f} over {len(paired)} reps"
    )


# ----------------------------------------------------------------------------- DDP scaling


def ddp_worker(opts) -> None:
    """One rank under torchrun: the chosen objective's step with DDP (plain module when world size 1)."""
    ctx = init_distributed("gloo" if opts.device == "cpu" else "auto")
    try:
        model = build_model(opts, ctx.device)
        contender = Contender(opts.ddp_objective, model, opts.value_head, ctx, strategy="ddp")
        batch = synthetic_batch(opts, opts.seed + ctx.rank)  # each rank its own rows, as the sampler gives
        tokens = torch.tensor([float(batch["attention_mask"].sum())])
        if ctx.is_distributed:
            torch.distributed.all_reduce(tokens)
        for _ in range(opts.ddp_warmup):
            contender.step(batch)
        if ctx.is_distributed:
            torch.distributed.barrier()
        start = time.perf_counter()
        for _ in range(opts.ddp_steps):
            contender.timed_step(batch)
        elapsed = time.perf_counter() - start
        if ctx.is_main:
            print(
                json.dumps(
                    {
                        "world_size": ctx.world_size,
                        "threads": torch.get_num_threads(),
                        "global_tokens_per_step": tokens.item(),
                        "median_step_s": statistics.median(contender.times),
                        "tokens_per_s": tokens.item() * opts.ddp_steps / elapsed,
                    }
                )
            )
    finally:
        destroy_distributed()


def launch_ddp(opts, nproc: int, threads: int, value_head_file: Path) -> dict:
    forwarded = [
        "--dim",
        opts.dim,
        "--n-layers",
        opts.n_layers,
        "--n-heads",
        opts.n_heads,
        "--n-kv-heads",
        opts.n_kv_heads,
        "--n-future",
        opts.n_future,
        "--vocab",
        opts.vocab,
        "--batch",
        opts.batch,
        "--seq",
        opts.seq,
        "--ddp-warmup",
        opts.ddp_warmup,
        "--seed",
        opts.seed,
        "--device",
        opts.device,
        "--ddp-objective",
        opts.ddp_objective,
        "--ddp-steps",
        opts.ddp_steps,
        "--threads",
        threads,
        "--value-head",
        value_head_file,
    ]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        str(Path(__file__).resolve()),
        "--ddp-worker",
        *map(str, forwarded),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"torchrun --nproc_per_node={nproc} failed:\n{done.stderr[-4000:]}")
    return json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])


def ddp_scaling(opts, value_head_file: Path) -> None:
    cores = max(2, opts.ddp_cores)
    # (processes, threads per rank): all cores in one process, the same cores split over two ranks,
    # and one process on one rank's share (per-rank efficiency of the two-process run).
    configs = [(1, cores), (2, cores // 2), (1, cores // 2)]
    print(
        f"\nDDP ({opts.ddp_objective} objective, gloo, {opts.batch} rows x seq {opts.seq} per rank, "
        f"{opts.ddp_warmup} warm-up + {opts.ddp_steps} timed steps per launch; launches alternate "
        f"{', '.join(f'{n}x{t}' for n, t in configs)}, then reversed, … (processes x threads))"
    )
    runs: dict[tuple[int, int], list[dict]] = {c: [] for c in configs}
    for rnd in range(opts.ddp_rounds):
        for nproc, threads in configs if rnd % 2 == 0 else configs[::-1]:
            runs[(nproc, threads)].append(launch_ddp(opts, nproc, threads, value_head_file))
    print("\n| processes | threads/rank | median step (ms) | global tokens/s | per launch |\n|---:|---:|---:|---:|---|")
    rate = {}
    for (nproc, threads), results in runs.items():
        rate[(nproc, threads)] = statistics.median(r["tokens_per_s"] for r in results)
        step = statistics.median(r["median_step_s"] for r in results)
        per_launch = ", ".join(f"{r['tokens_per_s']:,.0f}" for r in results)
        print(f"| {nproc} | {threads} | {step * 1e3:.1f} | {rate[(nproc, threads)]:,.0f} | {per_launch} |")
    two, one_all, one_share = rate[configs[1]], rate[configs[0]], rate[configs[2]]
    print(
        f"\nDDP scaling, same cores (tokens/s 2 procs x {configs[1][1]} thread / 1 proc x {cores} threads): "
        f"{two / one_all:.2f}x"
    )
    print(
        f"DDP scaling per rank (tokens/s 2 procs x {configs[1][1]} / 1 proc x {configs[2][1]}): "
        f"{two / one_share:.2f}x (ideal 2.00x)"
    )


def main(argv=None) -> None:
    opts = parse_args(argv)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if opts.ddp_worker:
        return ddp_worker(opts)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="wmtp-bench-step-") as tmp:
        value_head_file = write_value_head(opts.dim, Path(tmp), opts.seed)
        compare_objectives(opts, value_head_file)
        if not opts.skip_ddp:
            ddp_scaling(opts, value_head_file)
    print(f"\n(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
