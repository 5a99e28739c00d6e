"""Real torchrun processes (gloo, CPU): DDP = one process on the same global batch, FSDP2 = DDP,
and early stopping reached together by ranks that disagree."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from wmtp.model import load_model

pytestmark = pytest.mark.slow


def torchrun(args: list[str], nproc: int, timeout: int = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def train_cmd(overrides, run_dir, spec="baseline"):
    args = ["-m", "wmtp.train", spec, "--run-dir", str(run_dir)]
    for o in overrides:
        args += ["--set", o]
    return args


def final_weights(run_dir, stage):
    return load_model(run_dir / stage / "checkpoints" / "final").state_dict()


def logged_steps(stage_dir):
    """(step, metrics) of every training log line in a stage's metrics.jsonl."""
    lines = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    return [(m["step"], m) for m in lines if "grad_norm" in m]


def value_head(run_dir, stage):
    return load_file(run_dir / stage / "checkpoints" / "final" / "value_head.safetensors")


# Why these tolerances hold on any CPU. The runs differ only in the order float32 sums are taken
# (per-rank partial sums, all-reduce, FSDP's reduce-scatter, CPU kernels' blocking), so each gradient
# differs by a few float32 roundings of its terms: ~1e-7 relative, observed ≤ 5e-5 of a tensor's
# largest update after 3 steps (errors carry into later steps' gradients). Plain SGD keeps it that
# way: a step is exactly -lr·grad, whereas Adam divides by √v and turns rounding noise in a ~0
# gradient into an lr-sized step whose size depends on the CPU. A normaliser bug (a rank's share
# counted twice, a window's count missing) changes updates by ≥ 25 %, far above these tolerances.
UPDATE_RTOL = 1e-3  # of the largest update in the tensor: 20× the observed float-order difference
STORE_ULPS = 2 * torch.finfo(torch.float32).eps  # rounding of w0 + Δ when stored as float32
LOGGED_RTOL = 1e-4  # loss and grad norm: sums of float32 terms, observed ≤ 1e-6 apart


def assert_same_updates(a: dict, b: dict, scale: dict, magnitude: dict, what: str) -> None:
    """|a − b| ≤ UPDATE_RTOL · scale + STORE_ULPS · |w| per tensor, `scale` bounding its update."""
    for name in a:
        atol = UPDATE_RTOL * scale[name] + STORE_ULPS * float(magnitude[name].abs().max())
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=lambda m, name=name: f"{what} {name}: {m}")


def test_ddp_matches_one_process_and_fsdp_matches_ddp_for_every_objective(smoke_overrides, tmp_path):
    """The smoke experiment's four stages: critic (frozen trunk), verifiable (value head, anchor through
    the shared norm), baseline and rho1 tokenskip; FSDP with activation checkpointing, as in production.
    Plain SGD (see the tolerances above), no clipping and no weight decay, so every update is -lr·grad."""
    lr = 0.02
    common = smoke_overrides + [
        "train.max_steps=3",
        f"train.lr={lr}",
        "train.optimizer=sgd",
        "train.weight_decay=0",
        "train.warmup_steps=0",
        "train.schedule=constant",
        "train.eval_interval=1000",
        "train.save_interval=1000",
        "train.batch_size=1",
        "train.grad_clip=null",
        "train.log_interval=1",
    ]
    # Same global batch of 4 sequences: 1 process × 4 micro-batches vs 2 ranks × 2. One sequence per
    # micro-batch, so tokenskip selects the same tokens however the batch is split (it selects per
    # micro-batch); its normaliser, the window's kept count on all ranks, must then give equal steps.
    torchrun(
        train_cmd(common + ["train.grad_accum_steps=4", "distributed.strategy=none"], tmp_path / "one", spec="smoke"), 1
    )
    torchrun(
        train_cmd(common + ["train.grad_accum_steps=2", "distributed.strategy=ddp"], tmp_path / "ddp", spec="smoke"), 2
    )
    torchrun(
        train_cmd(
            common
            + ["train.grad_accum_steps=2", "distributed.strategy=fsdp", "distributed.activation_checkpointing=true"],
            tmp_path / "fsdp",
            spec="smoke",
        ),
        2,
    )
    initial = load_model(smoke_overrides[0].split("=", 1)[1]).state_dict()
    for stage in ("critic", "verifiable", "baseline", "rho1"):
        logged = [logged_steps(tmp_path / d / stage) for d in ("one", "ddp", "fsdp")]
        assert [step for step, _ in logged[0]] == [1, 2, 3], logged[0]
        # The logged step losses and gradient norms agree: a wrong normaliser shows in grad_norm at once.
        for other in logged[1:]:
            for (step, a), (_, b) in zip(logged[0], other):
                for key in ("loss/total", "grad_norm"):
                    assert b[key] == pytest.approx(a[key], rel=LOGGED_RTOL), f"{stage} step {step} {key}"
        one, ddp, fsdp = (final_weights(tmp_path / d, stage) for d in ("one", "ddp", "fsdp"))
        update = {k: float((one[k] - initial[k]).abs().max()) for k in one}
        assert_same_updates(ddp, one, update, one, f"{stage} DDP vs one process")
        assert_same_updates(fsdp, ddp, update, one, f"{stage} FSDP vs DDP")
        if stage != "critic":
            assert max(update.values()) > 1e-3, f"{stage} must move the weights"
        else:
            assert max(update.values()) == 0, "the critic's trunk is frozen"
        if stage in ("critic", "verifiable"):
            # The head's initial weights are not saved; SGD moves no element further than lr·Σ‖g_t‖.
            heads = [value_head(tmp_path / d, stage) for d in ("one", "ddp", "fsdp")]
            bound = lr * sum(m["grad_norm"] for _, m in logged[0])
            assert_same_updates(heads[1], heads[0], dict.fromkeys(heads[0], bound), heads[0], f"{stage} head DDP")
            assert_same_updates(heads[2], heads[1], dict.fromkeys(heads[0], bound), heads[0], f"{stage} head FSDP")


REDUCE_SCRIPT = textwrap.dedent(
    """
    import torch
    from wmtp.distributed import init_distributed, destroy_distributed
    from wmtp.train.loop import reduce_metrics

    ctx = init_distributed("gloo")
    keys = ["loss/total", "weight/mean", "weight/min", "weight/max", "td/min"]
    # Rank 1 saw no response token: its weight statistics are missing (masked_stats returns {}).
    mine = ({"loss/total": 1.0, "weight/mean": 2.0, "weight/min": 0.5, "weight/max": 3.0} if ctx.rank == 0
            else {"loss/total": 3.0})
    a = reduce_metrics(mine, keys, ctx, torch.device("cpu"))
    # Rank 1's loss/total is nan (undefined there): the others' value, not nan.
    b = reduce_metrics({"weight/min": 0.5 - ctx.rank * 0.3, "weight/max": 3.0 + ctx.rank,
                        "loss/total": 1.0 if ctx.rank == 0 else float("nan")}, keys, ctx, "cpu")
    print(f"rank {ctx.rank} a={sorted(a.items())} b={sorted(b.items())}", flush=True)
    destroy_distributed()
    """
)


def test_reduce_metrics_agrees_on_keys_and_takes_min_and_max(tmp_path):
    script = tmp_path / "reduce.py"
    script.write_text(REDUCE_SCRIPT)
    result = torchrun([str(script)], 2, timeout=120)
    a = "[('loss/total', 2.0), ('weight/max', 3.0), ('weight/mean', 2.0), ('weight/min', 0.5)]"
    b = "[('loss/total', 1.0), ('weight/max', 4.0), ('weight/min', 0.2)]"
    for rank in (0, 1):
        assert f"rank {rank} a={a} b={b}" in result.stdout, result.stdout


EARLY_STOP_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from wmtp.distributed import init_distributed, destroy_distributed
    from wmtp.train.sections import EarlyStoppingSection
    from wmtp.train.early_stopping import EarlyStopping

    ctx = init_distributed("gloo")
    stopper = EarlyStopping(EarlyStoppingSection(enabled=True, patience=2))
    # Rank 0's validation loss keeps improving; rank 1's stalls after step 3 (local losses disagree).
    step = 0
    while not stopper.should_stop(ctx, torch.device("cpu")):
        step += 1
        loss = 10.0 - step if ctx.rank == 0 else max(10.0 - step, 7.0)
        stopper.observe_validation({"val/loss": loss})
        if step > 50:
            sys.exit("never stopped")
    print(f"rank {ctx.rank} stopped at step {step}", flush=True)
    destroy_distributed()
    """
)


def test_ranks_that_disagree_stop_at_the_same_step(tmp_path):
    script = tmp_path / "early_stop.py"
    script.write_text(EARLY_STOP_SCRIPT)
    result = torchrun([str(script)], 2, timeout=120)
    # The two ranks share torchrun's stdout, so their lines can arrive glued together: match, don't split.
    stops = sorted(re.findall(r"rank \d stopped at step \d+", result.stdout))
    assert stops == ["rank 0 stopped at step 5", "rank 1 stopped at step 5"]
