"""The `Objective` base class: what every objective declares, and the MTP cross-entropy they share.

An objective is one module of this package defining `OBJECTIVE`, a subclass of `Objective` (see the
package docstring). The class says, in one place:

- what a spec loads without torch: its `name` (the stage's `objective:`), its config section (`section`,
  the spec key, and `config`, its pydantic model; none for baseline), its rules across sections
  (`check_spec`), the files it reads (`input_paths`, `needs_stage`, `check_inputs`) and the metric names
  it logs (`declared_metrics`);
- how it trains: `build` (from the spec, the device and earlier stages' outputs), `prepare`, `compute`.

Modules are imported whenever a spec loads (`wmtp train --dry-run` included), so torch and everything
that imports it are reached through `lazy_module`: imported at the first attribute used, in `compute`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Optional

if TYPE_CHECKING:
    import torch
    from torch import nn

    from wmtp.train.config import StageSpec
    from wmtp.train.objectives._train_module import TrainModule
    from wmtp.train.sections import Section


class lazy_module:  # noqa: N801 (used as a module)
    """A module imported when one of its attributes is first read: `torch = lazy_module("torch")`."""

    def __init__(self, name: str):
        self._name = name
        self._module = None

    def __getattr__(self, attr: str) -> Any:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)


if not TYPE_CHECKING:
    torch = lazy_module("torch")
mtp_loss = lazy_module("wmtp.model.mtp_loss")
td = lazy_module("wmtp.weighting.td")
stats = lazy_module("wmtp.weighting.stats")
flops = lazy_module("wmtp.train.flops")

VALUE_HEAD_FILE = "value_head.safetensors"  # written into every checkpoint of a stage with a value head

# What the loop logs besides the objective's; `epoch` = epochs completed (fractional: micro-batches / per
# epoch); `tokens` = input tokens (attention mask) seen since the stage began, all ranks, so runs compare by
# data seen. `tokens_per_s_per_device`, `mfu` (model FLOPs utilisation, wmtp.train.flops; only with a known
# peak) and `memory/peak_gib` (most device memory, or on CPU the process's peak RSS) every log_interval.
LOOP_METRICS = [
    "loss/total",
    "grad_norm",
    "lr",
    "tokens_per_s",
    "epoch",
    "tokens",
    "tokens_per_s_per_device",
    "mfu",
    "memory/peak_gib",
]


class InputPath(NamedTuple):
    """A file or dir a stage reads, checked to exist before anything starts (`wmtp.train.runner.check_inputs`)."""

    key: str  # the spec key that names it (`rho1.reference`)
    path: str
    expected: str  # what it should be, for the error
    model_dir: bool = False  # a model dir: `wmtp train --micro` builds the micro models when it is one of them


@dataclass(frozen=True)
class MetricNames:
    """Every key an objective's `compute` logs, declared up front: ranks reduce this fixed list, and a key
    `compute` puts out that is not declared is an error (`wmtp.train.loop.reduce_metrics`; a test runs every
    objective's `compute` and compares, tests/integration/test_objectives.py)."""

    train: list[str]  # `ObjectiveOutput.metrics` (training and validation batches)
    totals: list[str] = field(default_factory=list)  # `ObjectiveOutput.totals` (validation batches)
    pooled: list[str] = field(default_factory=list)  # what `pooled_metrics` derives from the totals

    @property
    def validation(self) -> list[str]:
        """Every validation metric (logged with a `val/` prefix): the loss, batch means, pooled totals."""
        return list(dict.fromkeys(["loss", *self.train, *self.pooled]))


@dataclass
class ObjectiveOutput:
    loss: "torch.Tensor"  # differentiable scalar
    metrics: dict[str, float] = field(default_factory=dict)  # detached floats for logging
    per_head: Optional["torch.Tensor"] = None  # [H] detached per-head MTP loss
    token_weights: Optional["torch.Tensor"] = None  # 1-D detached weights of valid tokens (histograms)
    # Validation only: sums and counts (keys of `MetricNames.totals`) that the loop adds up over every
    # batch and rank before `pooled_metrics` turns them into dataset-level numbers.
    totals: dict[str, float] = field(default_factory=dict)


def per_head_weights(token_weights_BS: "torch.Tensor", n_heads: int) -> "torch.Tensor":
    """`[B, S, H]` with entry (t, k) = weight of token x_{t+k+1}, the target of head k at t."""
    bsz, seq = token_weights_BS.shape
    out = torch.ones(bsz, seq, n_heads, dtype=token_weights_BS.dtype, device=token_weights_BS.device)
    for k in range(n_heads):
        out[:, : seq - k - 1, k] = token_weights_BS[:, k + 1 :]
    return out


def head_metrics(per_head: "torch.Tensor") -> dict[str, float]:
    return {f"loss/head_{k + 1}": v for k, v in enumerate(per_head.tolist())}


def stat_names(prefix: str) -> list[str]:
    """The keys `masked_stats(prefix, …)` returns."""
    return [f"{prefix}/{stat}" for stat in ("mean", "std", "min", "max")]


WEIGHT_METRICS = [*stat_names("weight"), "weight/frac_clipped", "weight/entropy"]  # `weight_stats`
# `td.explained_variance_sums` (td.EV_SUM_KEYS, spelled out here: wmtp.weighting.td imports torch)
VALUE_TOTALS = ["value/n", "value/sum_g", "value/sum_g2", "value/sum_r", "value/sum_r2", "value/sum_v", "value/sum_v2"]
VALUE_POOLED = ["value/explained_variance", "value/pred_var"]


def mtp_metric_names(n_heads: int) -> list[str]:
    return ["loss/mtp", *(f"loss/head_{k}" for k in range(1, n_heads + 1))]


def ce_total_names(n_heads: int) -> list[str]:
    return [f"ce/{part}/head_{k}" for k in range(1, n_heads + 1) for part in ("sum", "count")]


def ce_pooled_names(n_heads: int) -> list[str]:
    return ["ce", *(f"ce/head_{k}" for k in range(1, n_heads + 1))]


def ce_totals(per_head_mean: "torch.Tensor", labels_BSH: "torch.Tensor") -> dict[str, float]:
    """Per-head CE sums and target counts from per-head means over the local targets."""
    counts = (labels_BSH != mtp_loss.IGNORE_INDEX).sum(dim=(0, 1)).double()
    sums = per_head_mean.double() * counts
    totals = {}
    for k, (total, count) in enumerate(zip(sums.tolist(), counts.tolist()), start=1):
        totals[f"ce/sum/head_{k}"], totals[f"ce/count/head_{k}"] = total, count
    return totals


def pooled_metrics(totals: dict[str, float], head_weights: Optional[list[float]]) -> dict[str, float]:
    """Dataset-level validation metrics from summed totals (every batch, every rank).

    `ce/head_k` = Σ CE / Σ targets of head k, *without* token weights and over every target (tokens
    that tokenskip drops included): unlike the objective's loss it means the same thing at every step
    and in every experiment, so it is what `best` and early stopping watch by default. `ce` combines
    the heads with the loss's head weights (uniform mean by default). `value/explained_variance` is
    1 − Var[G−V]/Var[G] and `value/pred_var` Var[V] over all response tokens of the validation set
    (what the critic's early stopping judges).
    """
    out: dict[str, float] = {}
    n_heads = sum(1 for key in totals if key.startswith("ce/count/head_"))
    if n_heads:
        per_head = [totals[f"ce/sum/head_{k}"] / max(totals[f"ce/count/head_{k}"], 1.0) for k in range(1, n_heads + 1)]
        out.update({f"ce/head_{k}": v for k, v in enumerate(per_head, start=1)})
        alphas = mtp_loss.head_weights_or_uniform(n_heads, head_weights)
        out["ce"] = sum(a * v for a, v in zip(alphas, per_head))
    if all(key in totals for key in VALUE_TOTALS):
        out["value/explained_variance"] = td.explained_variance_from_sums(totals)
        out["value/pred_var"] = td.prediction_variance_from_sums(totals)
    return out


class Objective:
    """Base: plain MTP cross-entropy with weights given by `token_weights` (uniform here).

    Declared by the class (read when a spec loads, before any model): see the attributes and
    classmethods below. Asked of the instance by the loop, which knows nothing else of the experiment:
    the normaliser of its loss (`target_counts`), its metric keys (`metric_names`, `total_names`,
    `pooled_names`: its `declared_metrics`), the signals early stopping may watch
    (`early_stopping_signals`) and the validation metric `best` is chosen by (`default_monitor`).
    """

    name: ClassVar[str] = "baseline"  # the stage's `objective:` (and the module's name)
    section: ClassVar[Optional[str]] = None  # the spec key of its settings; None: it has none
    config: ClassVar[Optional[type[Section]]] = None  # the pydantic model of that section
    uses_value_head: ClassVar[bool] = False
    # "loss" = no improvement of the monitored validation metric; the critic adds step-level signals.
    early_stopping_signals: ClassVar[tuple[str, ...]] = ("loss",)
    default_monitor: ClassVar[str] = "val/ce"  # unweighted MTP cross-entropy on validation: comparable over runs

    # ------------------------------------------------------------------ declared (no torch)

    @classmethod
    def check_spec(cls, spec: StageSpec) -> None:
        """Rules across the spec's sections, run when the spec loads: raise `RuleError(key, message)`."""

    @classmethod
    def input_paths(cls, spec: StageSpec) -> list[InputPath]:
        """Files and dirs the objective reads besides the model and data (checked before anything starts)."""
        return []

    @classmethod
    def needs_stage(cls, spec: StageSpec) -> Optional[str]:
        """The earlier stage whose final checkpoint this one loads (found in `earlier_outputs` by `build`)."""
        return None

    instead_of_stage: ClassVar[Optional[str]] = None  # the key that names the file instead (`td.value_head`)

    @classmethod
    def check_inputs(cls, spec: StageSpec) -> None:
        """Cheap checks of what `input_paths` hold (they exist by then), before any model loads: raise WmtpError."""

    @classmethod
    def declared_metrics(cls, spec: StageSpec, n_heads: int) -> MetricNames:
        """Every key `compute` may log on a model with `n_heads` heads (see `MetricNames`)."""
        return MetricNames(mtp_metric_names(n_heads), ce_total_names(n_heads), ce_pooled_names(n_heads))

    @classmethod
    def build(cls, spec: StageSpec, device: "torch.device", earlier_outputs: dict[str, Path]) -> "Objective":
        """The objective of a stage; `earlier_outputs` maps stage name → its final checkpoint dir."""
        return cls(spec)

    # ------------------------------------------------------------------ training

    def __init__(self, spec: StageSpec):
        self.spec = spec

    @property
    def settings(self) -> Any:
        """This objective's section of the spec (`spec.td` for verifiable), None without one."""
        return getattr(self.spec, self.section) if self.section else None

    def metric_names(self, n_heads: int) -> list[str]:
        """Every key `compute` may put in `metrics` (ranks reduce this fixed list, missing → skipped)."""
        return self.declared_metrics(self.spec, n_heads).train

    def total_names(self, n_heads: int) -> list[str]:
        """Every key `compute` puts in `totals` during validation."""
        return self.declared_metrics(self.spec, n_heads).totals

    def pooled_names(self, n_heads: int) -> list[str]:
        """The keys `pooled_metrics` derives from `total_names`."""
        return self.declared_metrics(self.spec, n_heads).pooled

    def target_counts(self, batch: dict) -> "torch.Tensor":
        """`[H]` targets of each head that this micro-batch adds to the loss's denominator.

        The loop sums these over the accumulation window and all ranks, so every micro-batch's loss is
        its Σ w·CE divided by the count of the whole global batch (see `window_normalizers`).
        """
        return (batch["labels"] != mtp_loss.IGNORE_INDEX).sum(dim=(0, 1)).float()

    def model_flops(self, args, n_tokens: float, sum_len_sq: float) -> float:
        """Model FLOPs of a training step over these tokens (for MFU; wmtp.train.flops): the whole MTP
        model forward and backward. Work outside the model (a reference model, no-grad passes) is not
        model FLOPs, as in PaLM's MFU."""
        return flops.training_flops(args, n_tokens, sum_len_sq)

    def prepare(self, module: TrainModule, device: "torch.device") -> None:
        """Freeze / load what the objective needs before the optimizer is built."""

    def trainable_parameters(self, module: TrainModule) -> list["nn.Parameter"]:
        return [p for p in module.parameters() if p.requires_grad]

    def mtp_output(self, module, batch, h_trunk, weights_BS=None, labels=None, extra=None) -> ObjectiveOutput:
        """Σ w·CE per head over `labels` (default the batch's) / the normaliser, plus `extra`.

        In training the loop puts `target_counts` summed over the accumulation window and all ranks,
        divided by the world size, in `batch["num_valid_H"]`: the loss is then Σ w·CE / N_global exactly
        as one process on the global batch. Without it (validation) each batch uses its local count.
        """
        labels = batch["labels"] if labels is None else labels
        weights_BSH = None if weights_BS is None else per_head_weights(weights_BS, labels.shape[2])
        mtp = mtp_loss.mtp_loss_recomputed(
            module.model, h_trunk, labels, weights_BSH, self.spec.train.head_weights, batch.get("num_valid_H")
        )
        loss = mtp.total + (0.0 if extra is None else extra)
        metrics = {"loss/mtp": mtp.total.item(), **head_metrics(mtp.per_head)}
        out = ObjectiveOutput(loss=loss, metrics=metrics, per_head=mtp.per_head)
        if not module.training:
            unweighted = weights_BS is None and labels is batch["labels"]
            out.totals = self.validation_ce(module, batch, h_trunk, mtp.per_head if unweighted else None)
        return out

    def validation_ce(self, module, batch, h_trunk, per_head_unweighted=None) -> dict[str, float]:
        """Unweighted CE sums over every target (one more pass of the heads when the loss was weighted)."""
        if per_head_unweighted is None:
            with torch.no_grad():
                per_head_unweighted = mtp_loss.mtp_loss_recomputed(module.model, h_trunk, batch["labels"]).per_head
        return ce_totals(per_head_unweighted, batch["labels"])

    def compute(self, module: TrainModule, batch: dict) -> ObjectiveOutput:
        h_trunk = module.model.forward_trunk(batch["input_ids"])
        return self.mtp_output(module, batch, h_trunk)
