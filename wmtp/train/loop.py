"""The one training loop. Experiments differ only by their objective and data sampling.

    for each optimizer step:
        take grad_accum_steps micro-batches → count the objective's targets over the window on all ranks
        for each micro-batch: loss = module(batch, objective); loss.backward()
        clip → AdamW step → LR schedule → log / validate / early stop / checkpoint / preemption

Nothing here depends on which experiment runs: what differs is asked of the objective (its loss
normaliser, metric names, early-stopping signals and default monitor).
"""

from __future__ import annotations

import json
import math
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from wmtp.device import precision
from wmtp.distributed import DistContext, all_reduce_any, all_reduce_mean, parallelize, unwrap
from wmtp.model import ValueHead, load_model, load_tokenizer
from wmtp.tracking import Tracker, make_tracker
from wmtp.train import checkpointing as ckpt
from wmtp.train.config import StageSpec, dump_spec
from wmtp.train.data_loading import build_train_data, build_valid_loader, move_batch
from wmtp.train.early_stopping import EarlyStopping
from wmtp.train.flops import mfu, peak_flops
from wmtp.train.objectives import LOOP_METRICS, Objective, TrainModule, build_objective, pooled_metrics
from wmtp.train.progress import StageProgress
from wmtp.train.resume import drop_metrics_after
from wmtp.train.schedule import build_scheduler

MAX_WEIGHT_SAMPLES = 200_000  # token weights kept for the end-of-run histogram
# LOOP_METRICS: what the loop logs besides the objective's (wmtp.train.objectives.base says which).


class Preemption:
    """Set by SIGTERM; checked (collectively) at optimizer-step boundaries."""

    requested = False

    @classmethod
    def install(cls) -> None:
        cls.requested = False  # a fresh run in this process (tests run several)
        signal.signal(signal.SIGTERM, lambda *_: setattr(cls, "requested", True))


@dataclass
class StageResult:
    stage_dir: Path
    final: Optional[Path]
    steps: int
    stopped_early: bool = False
    preempted: bool = False
    last_metrics: dict = field(default_factory=dict)


@dataclass
class History:
    """Metric history on rank 0 for the end-of-run plots."""

    train: list[tuple[int, dict]] = field(default_factory=list)
    valid: list[tuple[int, dict]] = field(default_factory=list)
    weights: list[torch.Tensor] = field(default_factory=list)
    n_weights: int = 0

    def add_weights(self, weights: Optional[torch.Tensor]) -> None:
        if weights is not None and self.n_weights < MAX_WEIGHT_SAMPLES:
            self.weights.append(weights.float().cpu())
            self.n_weights += weights.numel()


def model_dtype(spec: StageSpec, device: torch.device) -> torch.dtype:
    """The parameters' dtype: fp32 master weights unless `model.dtype: bfloat16` (wmtp.device.precision)."""
    return precision(spec.model.dtype, device.type).weights


def device_name(device: torch.device) -> str:
    """What the peak-FLOPs table is matched against: the GPU's name, else the device type."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def peak_memory_gib(device: torch.device) -> float:
    """Most memory this stage has held on its device: CUDA allocator peak; elsewhere the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    if device.type == "mps":
        return torch.mps.driver_allocated_memory() / 2**30
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**30 if sys.platform == "darwin" else 2**20)  # bytes on macOS, KiB on Linux


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parents[2],
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_optimizer(params, t, device: torch.device) -> torch.optim.Optimizer:
    """The stage's optimizer from `train.optimizer` (AdamW, or plain SGD for exact comparisons)."""
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=0.0, weight_decay=t.weight_decay)
    # CUDA: the fused kernel (a few launches for every parameter's update, FSDP2's DTensor shards
    # included, as torchtitan runs it); elsewhere the per-tensor loop the pinned CPU losses were taken with.
    kernel = {"fused": True} if device.type == "cuda" else {"foreach": False}
    return torch.optim.AdamW(params, lr=t.lr, betas=t.betas, weight_decay=t.weight_decay, **kernel)


def window_normalizers(
    batches: list[dict], ctx: DistContext, device, objective: Objective
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-rank normalizers N_global/W for the MTP heads and the value loss over an accumulation window.

    N_global is the objective's target count (`Objective.target_counts`: valid targets, or for
    tokenskip the kept tokens) summed over the window's micro-batches on every rank. Each micro-batch
    divides its Σ w·CE by N_global/W; DDP / FSDP average gradients over the W ranks, so the step's
    gradient is that of Σ_global w·CE / N_global, whatever grad_accum_steps and the world size are.
    """
    valid_H = sum(objective.target_counts(b) for b in batches)
    response = sum(b["response_mask"].sum().float() for b in batches)
    counts = torch.cat([valid_H.to(device), response.reshape(1).to(device)])
    counts = all_reduce_mean(counts, ctx)
    return counts[:-1], counts[-1]


def metric_kind(key: str, window: bool = False) -> str:
    """How values of `key` combine: min, max, sum or mean.

    Over an accumulation window (`window=True`) the `loss/…` values are summed: each micro-batch's
    loss is its share of the window loss (divided by the window's count, see `window_normalizers`).
    Over ranks they are averaged (each rank's sum is W × its share of Σ/N_global).
    """
    if key.endswith("/min"):
        return "min"
    if key.endswith("/max"):
        return "max"
    if window and key.startswith("loss/"):
        return "sum"
    return "mean"


COMBINE = {"min": min, "max": max, "sum": sum, "mean": lambda values: sum(values) / len(values)}


def combine_metrics(outputs: list[dict], window: bool) -> dict[str, float]:
    """One value per key over micro-batches (`window`) or validation batches; keys absent are skipped.

    A NaN is a statistic undefined on its batch (e.g. explained variance where every return is the
    same): it counts as absent, so one such micro-batch does not turn the step's value into NaN."""
    combined = {}
    for key in sorted({k for m in outputs for k in m}):
        values = [m[key] for m in outputs if key in m and not math.isnan(m[key])]
        if values:
            combined[key] = COMBINE[metric_kind(key, window)](values)
    return combined


def reduce_metrics(metrics: dict[str, float], keys: list[str], ctx: DistContext, device) -> dict[str, float]:
    """Combine every rank's metrics over the fixed, agreed list `keys` (mean, or min / max for …/min, …/max).

    Every rank sends the same vector whatever it observed: a key a rank lacks (e.g. weight statistics
    of a micro-batch without response tokens) is left out of that key's mean / min / max, and a key no
    rank has is dropped. A key that is not in `keys` is a programming error, raised on every run
    (one process included) rather than silently lost or misaligned under torchrun.
    """
    unknown = sorted(set(metrics) - set(keys))
    if unknown:
        raise ValueError(f"metrics {unknown} are not declared by the objective (metric_names / LOOP_METRICS)")
    metrics = {k: v for k, v in metrics.items() if not math.isnan(v)}  # undefined here: absent (see above)
    if not ctx.is_distributed:
        return {k: metrics[k] for k in keys if k in metrics}
    kinds = [metric_kind(k) for k in keys]
    present = torch.tensor([k in metrics for k in keys], dtype=torch.float64, device=device)
    values = torch.tensor([metrics.get(k, 0.0) for k in keys], dtype=torch.float64, device=device)
    is_mean = torch.tensor([kind == "mean" for kind in kinds], device=device)
    sums = torch.cat([torch.where(is_mean, values * present, 0.0), present])
    dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    # MIN of the min-kind values and of the negated max-kind values; a rank without the key sends +inf.
    sign = torch.tensor([-1.0 if kind == "max" else 1.0 for kind in kinds], dtype=torch.float64, device=device)
    extremes = torch.where(present.bool(), sign * values, math.inf)
    dist.all_reduce(extremes, op=dist.ReduceOp.MIN)
    total, count = sums[: len(keys)], sums[len(keys) :]
    reduced = {}
    for i, (key, kind) in enumerate(zip(keys, kinds)):
        if count[i] > 0:
            reduced[key] = float(total[i] / count[i]) if kind == "mean" else float(sign[i] * extremes[i])
    return reduced


def sum_totals(totals: list[dict], keys: list[str], ctx: DistContext, device) -> dict[str, float]:
    """Σ of each key over batches and ranks (float64), for dataset-level validation metrics."""
    if not keys:
        return {}
    summed = torch.tensor([sum(t.get(k, 0.0) for t in totals) for k in keys], dtype=torch.float64, device=device)
    if ctx.is_distributed:
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)
    return dict(zip(keys, summed.tolist()))


class Trainer:
    """State and steps of one stage; `run()` is the loop."""

    def __init__(self, spec: StageSpec, stage_dir: Path, ctx: DistContext, earlier: dict[str, Path]):
        self.spec, self.stage_dir, self.ctx = spec, stage_dir, ctx
        self.device = ctx.device
        seed_everything(spec.train.seed)  # identical init of new modules (value head) on every rank
        self.tokenizer = load_tokenizer(spec.model.path)
        model = load_model(
            spec.model.path,
            device=self.device,
            dtype=model_dtype(spec, self.device),
            max_seq_len=spec.model.max_seq_len,
        )
        self.objective: Objective = build_objective(spec, self.device, earlier)
        value_head = ValueHead(model.args.dim).to(self.device) if self.objective.uses_value_head else None
        inner = TrainModule(model, value_head)
        self.objective.prepare(inner, self.device)
        self.n_heads = model.n_future_tokens
        self.model_args = model.args
        self.peak_flops = peak_flops(device_name(self.device), spec.train.peak_tflops)
        self.data = build_train_data(spec, self.tokenizer, self.n_heads, ctx)
        self.valid_loader = build_valid_loader(spec, self.tokenizer, self.n_heads, ctx)
        # auto on CUDA: FSDP2 mixed precision when FSDP shards (no autocast then), else bf16 autocast.
        mixed = precision(
            spec.model.dtype, self.device.type, fsdp=spec.distributed.strategy == "fsdp" and ctx.is_distributed
        )
        self.module = parallelize(
            inner,
            spec.distributed.strategy,
            ctx,
            spec.distributed.activation_checkpointing,
            compile=spec.train.compile,
            fsdp_param_dtype=mixed.fsdp_param_dtype,
        )
        reference = getattr(self.objective, "reference", None)  # Rho-1's frozen model, outside the shards
        if mixed.fsdp_param_dtype is not None and isinstance(reference, torch.nn.Module):
            # With no autocast it would compute in fp32: give it the policy's dtype (it only scores
            # tokens without gradients; its logits come out fp32), which also halves its memory.
            reference.to(mixed.fsdp_param_dtype)
        # Seed + rank from here on: whatever is random after the (identical) init differs between ranks.
        seed_everything(spec.train.seed + ctx.rank)
        params = self.objective.trainable_parameters(unwrap(self.module))
        t = spec.train
        self.optimizer = build_optimizer(params, t, self.device)
        self.total_steps = self.data.total_steps  # min(max_steps, num_epochs × steps per epoch)
        if self.total_steps == 0:
            from wmtp.errors import WmtpError

            raise WmtpError(
                f"{spec.data.train_file}: {self.data.n_rows} sampled rows give no optimizer step with batch_size="
                f"{t.batch_size} × grad_accum_steps={t.grad_accum_steps} × {ctx.world_size} rank(s)"
            )
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, t.warmup_steps, t.schedule, t.min_lr_ratio)
        self.early_stopping = EarlyStopping(
            spec.early_stopping, self.objective.early_stopping_signals, self.objective.default_monitor
        )
        self.check_monitor()
        self.state = {"step": 0, "epoch": 0, "micro_in_epoch": 0, "best_val": math.inf, "tokens": 0.0}
        self.history = History()
        self.resumed: Optional[bool] = None  # resume_if_possible's answer once it has looked
        self.progress: Optional[StageProgress] = None  # set by run(); validation reports to it
        # Selective AC replays a block's ops in backward and matches them one by one with the forward's:
        # autocast's weight-cast cache would let the forward skip casts that the replay then makes (of
        # weights already cast earlier in the step, e.g. by Rho-1's no-grad pass of the policy), so
        # it is off then (costing one cast per use of a weight instead of one per step).
        cache = spec.distributed.activation_checkpointing != "selective"
        self.autocast = (
            torch.autocast(self.device.type, dtype=mixed.autocast, cache_enabled=cache) if mixed.autocast else None
        )
        self.scaler = torch.amp.GradScaler(self.device.type) if mixed.loss_scaling else None

    # ------------------------------------------------------------------ metrics

    def train_metric_names(self) -> list[str]:
        return LOOP_METRICS + self.objective.metric_names(self.n_heads)

    def validation_names(self) -> list[str]:
        """Every validation metric this objective can log (without the `val/` prefix)."""
        o = self.objective
        return ["loss", *o.metric_names(self.n_heads), *o.pooled_names(self.n_heads)]

    def check_monitor(self) -> None:
        """A monitor the objective never logs would silently disable `best` and early stopping, and one
        where higher is better (explained variance, entropy, kept fraction) would pick the worst: only
        the objective's validation losses qualify."""
        available = [f"val/{k}" for k in dict.fromkeys(self.validation_names()) if k.split("/")[0] in ("loss", "ce")]
        if self.early_stopping.monitor not in available:
            from wmtp.train.config import SpecError

            raise SpecError(
                f"early_stopping.monitor: {self.early_stopping.monitor!r} is not a validation loss "
                f"of the {self.objective.name} objective (lower is better); expected one of {available}"
            )

    # ------------------------------------------------------------------ state

    def train_state(self) -> dict:
        return {
            **self.state,
            "scheduler": self.scheduler.state_dict(),
            "early_stopping": self.early_stopping.state_dict(),
            "sampler": {
                "epoch": self.state["epoch"],
                "position": self.state["micro_in_epoch"] * self.spec.train.batch_size,
            },
            "total_steps": self.total_steps,
            "spec_hash": self.spec.spec_hash(),
        }

    def resume_if_possible(self) -> bool:
        """Load the stage dir's latest checkpoint, if any (once: train_stage resumes before tracking starts)."""
        if self.resumed is not None:
            return self.resumed
        self.resumed = False
        for done in ckpt.remove_partial_checkpoints(self.stage_dir, self.ctx):  # left by a kill mid-save
            print(done)
        latest = ckpt.latest_checkpoint(self.stage_dir)
        if latest is None:
            return False
        saved = ckpt.load_checkpoint(latest, self.module, self.optimizer, self.ctx)
        self.scheduler.load_state_dict(saved["scheduler"])
        self.early_stopping.load_state_dict(saved["early_stopping"])
        self.state = {k: saved[k] for k in ("step", "epoch", "micro_in_epoch", "best_val")}
        # Checkpoints written before `tokens` was counted lack it: the count then restarts at the resume.
        # Under DDP/FSDP the checkpoint holds rank 0's tokens × world size, so up to the checkpoint a
        # resumed count is that estimate rather than the exact sum over ranks.
        self.state["tokens"] = float(saved.get("tokens", 0.0))
        if self.ctx.is_main:
            print(f"resumed {self.stage_dir.name} from {latest} at step {self.state['step']}")
        self.resumed = True
        return True

    def save(self, name: str) -> Path:
        path = ckpt.save_checkpoint(
            name, self.stage_dir, self.module, self.optimizer, self.train_state(), self.ctx, self.tokenizer
        )
        if self.ctx.is_main and name.startswith(ckpt.STEP_PREFIX):
            ckpt.prune_step_checkpoints(self.stage_dir, self.spec.train.keep_last)
        return path

    # ------------------------------------------------------------------ steps

    def forward_backward(self, batch: dict):
        if self.autocast is not None:
            with self.autocast:
                out = self.module(batch, self.objective)
        else:
            out = self.module(batch, self.objective)
        (self.scaler.scale(out.loss) if self.scaler is not None else out.loss).backward()
        return out

    def optimizer_step(self, window: list[dict]) -> dict[str, float]:
        num_valid_H, num_response = window_normalizers(window, self.ctx, self.device, self.objective)
        outputs, n_tokens, sum_len_sq = [], 0, 0
        for raw in window:
            batch = move_batch(raw, self.device)
            batch["num_valid_H"], batch["num_response"] = num_valid_H, num_response
            out = self.forward_backward(batch)
            outputs.append(out.metrics | {"loss/total": out.loss.item()})
            self.history.add_weights(out.token_weights)
            lengths = batch["attention_mask"].sum(dim=1)
            n_tokens += int(lengths.sum())
            sum_len_sq += int((lengths * lengths).sum())
        grad_norm = self.clip_gradients()
        if self.scaler is not None:  # skips the step when a gradient overflowed, then adapts the scale
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        metrics = combine_metrics(outputs, window=True) | {
            "grad_norm": grad_norm,
            "lr": self.scheduler.get_last_lr()[0],
        }
        metrics["tokens"] = float(n_tokens)
        metrics["flops"] = self.objective.model_flops(self.model_args, n_tokens, sum_len_sq)
        return metrics

    def speed_metrics(self, tokens: float, flops: float, elapsed: float) -> dict[str, float]:
        """Throughput of one log interval: all ranks' tokens/s, per device, this rank's MFU and peak memory."""
        elapsed = max(elapsed, 1e-9)
        metrics = {
            "tokens_per_s": tokens / elapsed,
            "tokens_per_s_per_device": tokens / self.ctx.world_size / elapsed,
            "memory/peak_gib": peak_memory_gib(self.device),
        }
        utilisation = mfu(flops / elapsed, self.peak_flops)
        if utilisation is not None:
            metrics["mfu"] = utilisation
        return metrics

    def clip_gradients(self) -> float:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clip (and report) the true gradients, not the scaled ones
        params = [p for p in self.module.parameters() if p.grad is not None]
        max_norm = self.spec.train.grad_clip if self.spec.train.grad_clip is not None else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):  # DTensor under FSDP2
            norm = norm.full_tensor()
        return float(norm)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Batch means of the objective's metrics, plus dataset-level metrics pooled over all batches
        and ranks (`pooled_metrics`: unweighted CE per head, value explained variance)."""
        if self.valid_loader is None:
            return {}
        self.module.eval()
        outputs, totals = [], []
        for raw in self.valid_loader:
            out = self.module(move_batch(raw, self.device), self.objective)
            outputs.append(out.metrics | {"loss": out.loss.item()})
            totals.append(out.totals)
        self.module.train()
        names = ["loss", *self.objective.metric_names(self.n_heads)]
        metrics = reduce_metrics(combine_metrics(outputs, window=False), names, self.ctx, self.device)
        summed = sum_totals(totals, self.objective.total_names(self.n_heads), self.ctx, self.device)
        metrics |= pooled_metrics(summed, self.spec.train.head_weights)
        return {f"val/{k}": v for k, v in metrics.items()}

    # ------------------------------------------------------------------ loop

    def run(self, tracker: Tracker) -> StageResult:
        t = self.spec.train
        self.resume_if_possible()
        self.module.train()
        label = f"{self.spec.experiment}/{self.spec.stage}"
        self.progress = progress = StageProgress(self.ctx.is_main, label, self.total_steps, self.state["step"])
        result = StageResult(stage_dir=self.stage_dir, final=None, steps=self.state["step"])
        started, tokens_since, flops_since = time.perf_counter(), 0.0, 0.0
        while self.state["step"] < self.total_steps and self.state["epoch"] < t.num_epochs:
            self.data.sampler.set_epoch(self.state["epoch"])
            self.data.sampler.load_state_dict(
                {"epoch": self.state["epoch"], "position": self.state["micro_in_epoch"] * t.batch_size}
            )
            batches = iter(self.data.loader)
            while self.state["micro_in_epoch"] + t.grad_accum_steps <= self.data.micro_batches_per_epoch:
                window = [next(batches) for _ in range(t.grad_accum_steps)]
                metrics = self.optimizer_step(window)
                self.state["micro_in_epoch"] += t.grad_accum_steps
                self.state["step"] += 1
                step = self.state["step"]
                metrics["epoch"] = (
                    self.state["epoch"] + self.state["micro_in_epoch"] / self.data.micro_batches_per_epoch
                )
                # This rank's tokens × world size: the mean over ranks (reduce_metrics) is the global sum.
                step_tokens = metrics.pop("tokens") * self.ctx.world_size
                tokens_since += step_tokens
                flops_since += metrics.pop("flops")  # this rank's
                self.state["tokens"] += step_tokens
                self.early_stopping.observe_step(metrics)
                if step % t.log_interval == 0 or step == self.total_steps:
                    elapsed = time.perf_counter() - started
                    metrics.update(self.speed_metrics(tokens_since, flops_since, elapsed))
                    metrics["tokens"] = self.state["tokens"]
                    started, tokens_since, flops_since = time.perf_counter(), 0.0, 0.0
                    metrics = reduce_metrics(metrics, self.train_metric_names(), self.ctx, self.device)
                    tracker.log_metrics(metrics, step)
                    self.write_local_metrics(step, metrics)
                    self.history.train.append((step, metrics))
                    result.last_metrics = metrics
                progress.update(step, metrics)
                stop = self.after_step(step, tracker)
                if stop or step >= self.total_steps:
                    result.stopped_early = stop == "early"
                    result.preempted = stop == "preempted"
                    break
            else:
                self.state["epoch"] += 1
                self.state["micro_in_epoch"] = 0
                continue
            break
        progress.close()
        result.steps = self.state["step"]
        if result.preempted:
            return result
        result.final = self.finish(tracker)
        return result

    def after_step(self, step: int, tracker: Tracker) -> Optional[str]:
        """Validation, early stopping, checkpoints, then preemption — every decision taken by all ranks.

        Preemption comes last so that a SIGTERM during an eval step still validates that step before
        saving: the resumed run starts at step+1 and would otherwise never validate it (`best`, early
        stopping and metrics.jsonl would differ from an uninterrupted run).
        """
        t = self.spec.train
        stop = validated = False
        if step % t.eval_interval == 0 and step < self.total_steps:
            validated = bool(self.record_validation(step, tracker))
            stop = self.early_stopping.should_stop(self.ctx, self.device, step)
        elif self.early_stopping.checks_every_step:
            stop = self.early_stopping.should_stop(self.ctx, self.device, step)
        if self.spec.early_stopping.enabled and (validated or stop):
            self.log_early_stopping(step, tracker)
        if stop:
            return "early"  # finish() saves the final checkpoint
        saved = step % t.save_interval == 0 and step < self.total_steps
        if saved:
            self.save(f"{ckpt.STEP_PREFIX}{step:06d}")
        if Preemption.requested or self.ctx.is_distributed:
            if all_reduce_any(Preemption.requested, self.ctx, self.device):
                if not saved:
                    self.save(f"{ckpt.STEP_PREFIX}{step:06d}")
                if self.ctx.is_main:
                    print(f"preempted: saved step {step}; rerun the same command to resume")
                return "preempted"
        return None

    def log_early_stopping(self, step: int, tracker: Tracker) -> None:
        """`early_stopping/*` (counter, best, the critic's unstable fraction, stopped) after each
        validation and at the stop; the reason goes to metrics.jsonl, an MLflow tag and the console."""
        outcome = self.early_stopping.outcome()
        tracker.log_metrics(outcome, step)
        reason = self.early_stopping.state.stopped_reason
        if reason is None:
            self.write_local_metrics(step, outcome)
            return
        self.write_local_metrics(step, outcome | {"early_stopping/reason": reason})
        tracker.set_tags({"early_stopping.reason": reason, "early_stopping.step": str(step)})
        if self.ctx.is_main:
            best = outcome.get("early_stopping/best", math.nan)
            print(
                f"early stopping at step {step}: {reason} ({self.early_stopping.monitor} best {best:.4f}, "
                f"{self.early_stopping.state.bad_validations} validation(s) without improvement)"
            )

    def write_local_metrics(self, step: int, metrics: dict) -> None:
        """Append to <stage_dir>/metrics.jsonl on rank 0: the run's numbers without any server."""
        if self.ctx.is_main:
            with open(self.stage_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")

    def record_validation(self, step: int, tracker: Tracker) -> dict:
        val = self.validate()
        if not val:
            return val
        tracker.log_metrics(val, step)
        self.write_local_metrics(step, val)
        self.history.valid.append((step, val))
        self.early_stopping.observe_validation(val)
        monitored = val.get(self.early_stopping.monitor, math.nan)  # same on every rank (reduced)
        is_best = monitored < self.state["best_val"]  # False for nan
        if self.progress is not None:
            self.progress.validation(step, self.early_stopping.monitor, val.get(self.early_stopping.monitor), is_best)
        if is_best:
            self.state["best_val"] = monitored
            self.save("best")
        return val

    def finish(self, tracker: Tracker) -> Optional[Path]:
        """Final validation, final checkpoint (with the value head when there is one), plots."""
        step = self.state["step"]
        if not self.history.valid or self.history.valid[-1][0] != step:  # not just validated (early stop)
            validated = bool(self.record_validation(step, tracker))
            if validated and self.spec.early_stopping.enabled and self.early_stopping.state.stopped_reason is None:
                self.log_early_stopping(step, tracker)  # the outcome of a stage that ran to its end
        final = self.save("final")
        if self.ctx.is_main:
            from wmtp.train.plots import write_plots

            for png in write_plots(
                self.history,
                self.stage_dir / "plots",
                self.n_heads,
                experiment=self.spec.experiment,
                stage=self.spec.stage,
            ):
                tracker.log_artifact(png, "plots")
        return final


def train_stage(
    spec: StageSpec, stage_dir: Path, ctx: DistContext, earlier: dict[str, Path], parent: Optional[Tracker] = None
) -> StageResult:
    """Train one stage in `stage_dir` (resuming when it holds a checkpoint) and track it on rank 0, in a run
    named `<job>/<stage>` (the job: the run dir's name) nested under the job's run `parent`, if given."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(spec, stage_dir, ctx, earlier)
    trainer.resume_if_possible()  # before tracking: what was logged after the checkpoint goes first (below)
    tags = {
        "experiment": spec.experiment,
        "stage": spec.stage,
        "objective": spec.objective,
        "git_commit": git_commit(),
        "spec_hash": spec.spec_hash(),
        "run_dir": str(stage_dir.resolve()),
        "job": stage_dir.resolve().parent.name,
    }
    run_name = spec.tracking.run_name or f"{tags['job']}/{spec.stage}"
    tracker = make_tracker(
        ctx.is_main,
        spec.tracking.uri,
        spec.tracking.experiment,
        run_name,
        tags,
        spec.tracking.buffer_size,
        stage_dir=stage_dir,
        parent=parent,
    )
    if ctx.is_main:
        # Each step once, with the values of the run that goes on: the interrupted run's entries after
        # the checkpoint (all of them when it saved none) are dropped before anything is logged again.
        drop_metrics_after(stage_dir / "metrics.jsonl", trainer.state["step"])
        tracker.forget_after(trainer.state["step"])
        if not (stage_dir / "spec.yaml").is_file():  # a resumed stage keeps the spec it started with (check_run_dir)
            (stage_dir / "spec.yaml").write_text(dump_spec(spec))
        tracker.log_spec(spec.to_dict())  # params, and deployment.yaml for targets / env / output
        tracker.log_artifact(stage_dir / "spec.yaml")
    status = "FAILED"
    try:
        result = trainer.run(tracker)
        status = "KILLED" if result.preempted else "FINISHED"
        return result
    finally:
        tracker.close(status)
