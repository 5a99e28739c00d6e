"""Objectives: how a batch becomes a loss and metrics. The training loop knows nothing else.

Every objective runs inside `TrainModule.forward` (so DDP / FSDP see one forward per micro-step) and
returns an `ObjectiveOutput` whose `loss` is backpropagated once by the loop.

| objective  | token weights                          | trainable                       |
|------------|----------------------------------------|---------------------------------|
| baseline   | 1                                      | policy                          |
| critic     | — (value loss only, trunk frozen)      | value head                      |
| verifiable | clip(exp(δ/β), w_min, w_max) from TD   | policy + value head             |
| rho1       | reference excess loss (soft / top-k)   | policy                          |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file
from torch import nn

from wmtp.errors import CheckpointError
from wmtp.model import IGNORE_INDEX, Transformer, ValueHead
from wmtp.model.mtp_loss import head_weights_or_uniform, mtp_loss_recomputed
from wmtp.train.config import StageSpec
from wmtp.train.flops import training_flops, trunk_forward_flops
from wmtp.weighting import rho1 as rho1_weights
from wmtp.weighting import td
from wmtp.weighting.stats import masked_stats, weight_stats

VALUE_HEAD_FILE = "value_head.safetensors"  # written into every checkpoint of a stage with a value head


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor  # differentiable scalar
    metrics: dict[str, float] = field(default_factory=dict)  # detached floats for logging
    per_head: Optional[torch.Tensor] = None  # [H] detached per-head MTP loss
    token_weights: Optional[torch.Tensor] = None  # 1-D detached weights of valid tokens (histograms)
    # Validation only: sums and counts (keys of `Objective.total_names`) that the loop adds up over every
    # batch and rank before `pooled_metrics` turns them into dataset-level numbers.
    totals: dict[str, float] = field(default_factory=dict)


class TrainModule(nn.Module):
    """The policy and, when the objective has one, its value head: the unit DDP / FSDP wrap."""

    def __init__(self, model: Transformer, value_head: Optional[ValueHead] = None):
        super().__init__()
        self.model = model
        self.value_head = value_head

    def forward(self, batch: dict, objective: "Objective") -> ObjectiveOutput:
        return objective.compute(self, batch)

    def values(self, h_trunk_BSD: torch.Tensor) -> torch.Tensor:
        return self.value_head(self.model.norm(h_trunk_BSD))


def per_head_weights(token_weights_BS: torch.Tensor, n_heads: int) -> torch.Tensor:
    """`[B, S, H]` with entry (t, k) = weight of token x_{t+k+1}, the target of head k at t."""
    bsz, seq = token_weights_BS.shape
    out = torch.ones(bsz, seq, n_heads, dtype=token_weights_BS.dtype, device=token_weights_BS.device)
    for k in range(n_heads):
        out[:, : seq - k - 1, k] = token_weights_BS[:, k + 1 :]
    return out


def head_metrics(per_head: torch.Tensor) -> dict[str, float]:
    return {f"loss/head_{k + 1}": v for k, v in enumerate(per_head.tolist())}


def stat_names(prefix: str) -> list[str]:
    """The keys `masked_stats(prefix, …)` returns."""
    return [f"{prefix}/{stat}" for stat in ("mean", "std", "min", "max")]


WEIGHT_METRICS = [*stat_names("weight"), "weight/frac_clipped", "weight/entropy"]
VALUE_TOTALS = list(td.EV_SUM_KEYS)


def mtp_metric_names(n_heads: int) -> list[str]:
    return ["loss/mtp", *(f"loss/head_{k}" for k in range(1, n_heads + 1))]


def ce_total_names(n_heads: int) -> list[str]:
    return [f"ce/{part}/head_{k}" for k in range(1, n_heads + 1) for part in ("sum", "count")]


def ce_totals(per_head_mean: torch.Tensor, labels_BSH: torch.Tensor) -> dict[str, float]:
    """Per-head CE sums and target counts from per-head means over the local targets."""
    counts = (labels_BSH != IGNORE_INDEX).sum(dim=(0, 1)).double()
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
        alphas = head_weights_or_uniform(n_heads, head_weights)
        out["ce"] = sum(a * v for a, v in zip(alphas, per_head))
    if all(key in totals for key in VALUE_TOTALS):
        out["value/explained_variance"] = td.explained_variance_from_sums(totals)
        out["value/pred_var"] = td.prediction_variance_from_sums(totals)
    return out


class Objective:
    """Base: plain MTP cross-entropy with weights given by `token_weights` (uniform here).

    Besides `compute`, an objective tells the loop what it cannot guess without asking which
    experiment this is: the normaliser of its loss (`target_counts`), the metric keys every rank
    agrees on (`metric_names`, `total_names`, `pooled_names`), the signals early stopping may watch
    (`early_stopping_signals`) and the validation metric `best` is chosen by (`default_monitor`).
    """

    name = "baseline"
    uses_value_head = False
    # "loss" = no improvement of the monitored validation metric; the critic adds step-level signals.
    early_stopping_signals: tuple[str, ...] = ("loss",)
    default_monitor = "val/ce"  # unweighted MTP cross-entropy on validation: comparable over steps and runs

    def __init__(self, spec: StageSpec):
        self.spec = spec

    def target_counts(self, batch: dict) -> torch.Tensor:
        """`[H]` targets of each head that this micro-batch adds to the loss's denominator.

        The loop sums these over the accumulation window and all ranks, so every micro-batch's loss is
        its Σ w·CE divided by the count of the whole global batch (see `window_normalizers`).
        """
        return (batch["labels"] != IGNORE_INDEX).sum(dim=(0, 1)).float()

    def metric_names(self, n_heads: int) -> list[str]:
        """Every key `compute` may put in `metrics` (ranks reduce this fixed list, missing → skipped)."""
        return mtp_metric_names(n_heads)

    def total_names(self, n_heads: int) -> list[str]:
        """Every key `compute` puts in `totals` during validation."""
        return ce_total_names(n_heads)

    def pooled_names(self, n_heads: int) -> list[str]:
        """The keys `pooled_metrics` derives from `total_names`."""
        return ["ce", *(f"ce/head_{k}" for k in range(1, n_heads + 1))]

    def model_flops(self, args, n_tokens: float, sum_len_sq: float) -> float:
        """Model FLOPs of a training step over these tokens (for MFU; wmtp.train.flops): the whole MTP
        model forward and backward. Work outside the model (a reference model, no-grad passes) is not
        model FLOPs, as in PaLM's MFU."""
        return training_flops(args, n_tokens, sum_len_sq)

    def prepare(self, module: TrainModule, device: torch.device) -> None:
        """Freeze / load what the objective needs before the optimizer is built."""

    def trainable_parameters(self, module: TrainModule) -> list[nn.Parameter]:
        return [p for p in module.parameters() if p.requires_grad]

    def mtp_output(self, module, batch, h_trunk, weights_BS=None, labels=None, extra=None) -> ObjectiveOutput:
        """Σ w·CE per head over `labels` (default the batch's) / the normaliser, plus `extra`.

        In training the loop puts `target_counts` summed over the accumulation window and all ranks,
        divided by the world size, in `batch["num_valid_H"]`: the loss is then Σ w·CE / N_global exactly
        as one process on the global batch. Without it (validation) each batch uses its local count.
        """
        labels = batch["labels"] if labels is None else labels
        weights_BSH = None if weights_BS is None else per_head_weights(weights_BS, labels.shape[2])
        mtp = mtp_loss_recomputed(module.model, h_trunk, labels, weights_BSH, self.spec.train.head_weights,
                                  batch.get("num_valid_H"))
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
                per_head_unweighted = mtp_loss_recomputed(module.model, h_trunk, batch["labels"]).per_head
        return ce_totals(per_head_unweighted, batch["labels"])

    def compute(self, module: TrainModule, batch: dict) -> ObjectiveOutput:
        h_trunk = module.model.forward_trunk(batch["input_ids"])
        return self.mtp_output(module, batch, h_trunk)


class BaselineObjective(Objective):
    name = "baseline"


class CriticObjective(Objective):
    """Stage 1: trunk frozen (no grad), value head regressed on the returns G_j = γ^{T−j}·R.

    Its checkpoints carry `value_head.safetensors`, which the verifiable stage loads.
    """

    name = "critic"
    uses_value_head = True
    # Besides the validation loss: unstable gradient norms (every step) and the validation set's
    # prediction variance leaving [pred_var_min, pred_var_max] (wmtp.train.early_stopping).
    early_stopping_signals = ("loss", "grad_norm", "pred_var")
    default_monitor = "val/loss"  # the value loss: the only loss the critic trains

    def prepare(self, module, device):
        module.model.requires_grad_(False)

    def model_flops(self, args, n_tokens, sum_len_sq):
        return trunk_forward_flops(args, n_tokens, sum_len_sq)  # the frozen trunk runs forward only

    def metric_names(self, n_heads):
        return ["loss/value", "value/explained_variance", "value/pred_var", *stat_names("value")]

    def total_names(self, n_heads):
        return VALUE_TOTALS

    def pooled_names(self, n_heads):
        return ["value/explained_variance", "value/pred_var"]

    def compute(self, module, batch):
        cfg = self.spec.critic
        with torch.no_grad():
            h_trunk = module.model.forward_trunk(batch["input_ids"])
        values = module.values(h_trunk)
        mask = batch["response_mask"]
        returns = td.value_returns(mask, batch["is_correct"], cfg.gamma)
        loss = td.value_loss(values, returns, mask, cfg.value_loss, cfg.huber_delta,
                             normalizer=batch.get("num_response"))
        selected = values.detach()[mask]
        metrics = {
            "loss/value": loss.item(),
            "value/explained_variance": td.explained_variance(values, returns, mask),
            "value/pred_var": selected.var().item() if selected.numel() > 1 else 0.0,
            **masked_stats("value", values, mask),
        }
        totals = {} if module.training else td.explained_variance_sums(values, returns, mask)
        return ObjectiveOutput(loss=loss, metrics=metrics, totals=totals)


def load_value_head(path: Path, dim: int) -> ValueHead:
    head = ValueHead(dim)
    try:
        state = load_file(path)
    except Exception as exc:  # missing or corrupt file
        raise CheckpointError(f"{path}: cannot load the critic's value head ({exc})") from None
    expected = head.state_dict()
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in expected):
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        raise CheckpointError(f"{path}: value head keys/shapes {shapes} do not match dim={dim}")
    head.load_state_dict(state)
    return head


class VerifiableObjective(Objective):
    """Stage 2: TD-weighted MTP + value_coef · value loss (clipped around the frozen stage-1 head)."""

    name = "verifiable"
    uses_value_head = True

    def __init__(self, spec, value_head_path: Optional[Path] = None):
        super().__init__(spec)
        path = spec.td.value_head or value_head_path
        if path is None:
            raise CheckpointError(
                "td.value_head: no critic value head — run the critic stage first (stages: [critic, verifiable]) "
                "or set td.value_head to a value_head.safetensors"
            )
        self.value_head_path = Path(path)
        self.anchor: Optional[ValueHead] = None

    def metric_names(self, n_heads):
        return [*mtp_metric_names(n_heads), "loss/value", "value/explained_variance", *stat_names("td"),
                *WEIGHT_METRICS]

    def total_names(self, n_heads):
        return [*ce_total_names(n_heads), *VALUE_TOTALS]

    def pooled_names(self, n_heads):
        return [*super().pooled_names(n_heads), "value/explained_variance", "value/pred_var"]

    def prepare(self, module, device):
        stage1 = load_value_head(self.value_head_path, module.model.args.dim)
        module.value_head.load_state_dict(stage1.state_dict())
        if self.spec.td.value_clip is not None:
            self.anchor = stage1.to(device).requires_grad_(False)

    def compute(self, module, batch):
        cfg = self.spec.td
        mask, rewards = batch["response_mask"], batch["is_correct"]
        h_trunk = module.model.forward_trunk(batch["input_ids"])
        values = module.values(h_trunk)
        deltas = td.td_errors(values, mask, rewards, cfg.gamma)
        weights = td.td_weights(deltas, mask, cfg.beta, cfg.w_min, cfg.w_max)
        returns = td.value_returns(mask, rewards, cfg.gamma)
        anchor_values = None
        if self.anchor is not None:
            with torch.no_grad():
                anchor_values = self.anchor(module.model.norm(h_trunk.detach()))
        v_loss = td.value_loss(values, returns, mask, cfg.value_loss, cfg.huber_delta, anchor_values, cfg.value_clip,
                               normalizer=batch.get("num_response"))
        out = self.mtp_output(module, batch, h_trunk, weights, extra=cfg.value_coef * v_loss)
        out.metrics.update(
            {
                "loss/value": v_loss.item(),
                "value/explained_variance": td.explained_variance(values, returns, mask),
                **masked_stats("td", deltas, mask),
                **weight_stats(weights, mask, cfg.w_min, cfg.w_max),
            }
        )
        out.token_weights = weights.detach()[mask]
        if not module.training:
            out.totals.update(td.explained_variance_sums(values, returns, mask))
        return out


class Rho1Objective(Objective):
    """Reference-model excess loss Δ = L_θ(head 1) − L_ref selects (tokenskip) or weights tokens.

    Both modes look at one micro-batch of one rank at a time ("the batch" of DESIGN.md):
    - tokenskip keeps the top `keep_ratio` of the micro-batch's valid tokens by Δ (exactly
      `rho1.kept_count` of them, ties broken by position). Selecting over the global batch would need
      every rank's Δ of every micro-batch of the window before the first backward. The *normaliser*
      is global: every head divides Σ CE over the kept tokens by the number of tokens kept in the
      whole window on all ranks (known up front from the valid counts, see `target_counts`), so the
      gradient does not grow with grad_accum_steps or depend on how the batch is split over ranks.
      With batch_size 1 the selection is per sequence and DDP equals one process exactly.
    - weighted: softmax(Δ/τ) over the micro-batch's valid tokens, scaled to mean 1 and clipped; the
      loss is Σ w·CE over the window's valid targets (all ranks), as for every weighted objective.
    """

    name = "rho1"

    def __init__(self, spec, reference: nn.Module):
        super().__init__(spec)
        self.reference = reference.requires_grad_(False).eval()

    def target_counts(self, batch) -> torch.Tensor:
        counts = super().target_counts(batch)
        cfg = self.spec.rho1
        if cfg.mode != "tokenskip":
            return counts
        # Valid tokens x_j are the targets of head 1 (labels[:, j−1, 0]); the same tokens are kept
        # for every head. A kept token j ≤ k has no head-k label (it would need a prompt shorter
        # than k tokens, which the template never produces); it still counts, so every head's loss is
        # the mean over the kept tokens.
        n_valid = int((batch["labels"][:, :, 0] != IGNORE_INDEX).sum())
        return torch.full_like(counts, float(rho1_weights.kept_count(n_valid, cfg.keep_ratio)))

    def metric_names(self, n_heads):
        names = [*mtp_metric_names(n_heads), *stat_names("excess_loss")]
        return names + (["rho1/kept_fraction"] if self.spec.rho1.mode == "tokenskip" else WEIGHT_METRICS)

    def reference_losses(self, batch) -> torch.Tensor:
        next_token_labels = batch["labels"][:, :, 0]
        with torch.no_grad():
            logits = self.reference(batch["input_ids"])
            logits = logits[:, :, 0] if logits.dim() == 4 else logits  # our class → head 1; HF → [B,S,V]
        return rho1_weights.token_losses(logits, next_token_labels)

    def compute(self, module, batch):
        cfg = self.spec.rho1
        labels = batch["labels"]
        h_trunk = module.model.forward_trunk(batch["input_ids"])
        with torch.no_grad():
            policy_losses = rho1_weights.token_losses(module.model.forward_head(h_trunk, 0), labels[:, :, 0])
        valid = labels[:, :, 0] != IGNORE_INDEX
        excess = policy_losses - self.reference_losses(batch)
        # Δ is indexed by the position t that predicts x_{t+1}; shift to index by the token itself.
        excess_tok = torch.zeros_like(excess)
        excess_tok[:, 1:] = excess[:, :-1]
        valid_tok = torch.zeros_like(valid)
        valid_tok[:, 1:] = valid[:, :-1]
        metrics = masked_stats("excess_loss", excess_tok, valid_tok)
        if cfg.mode == "tokenskip":
            keep = rho1_weights.tokenskip_mask(excess_tok, valid_tok, cfg.keep_ratio)
            metrics["rho1/kept_fraction"] = keep.sum().item() / max(1, valid_tok.sum().item())
            out = self.mtp_output(module, batch, h_trunk, labels=self.drop_tokens(labels, keep))
        else:
            weights = rho1_weights.soft_weights(excess_tok, valid_tok, cfg.temperature, cfg.w_min, cfg.w_max)
            metrics.update(weight_stats(weights, valid_tok, cfg.w_min, cfg.w_max))
            out = self.mtp_output(module, batch, h_trunk, weights)
            out.token_weights = weights.detach()[valid_tok]
        out.metrics.update(metrics)
        return out

    @staticmethod
    def drop_tokens(labels_BSH: torch.Tensor, keep_tok_BS: torch.Tensor) -> torch.Tensor:
        """Ignore every head's label whose target token was not selected."""
        keep_BSH = per_head_weights(keep_tok_BS.float(), labels_BSH.shape[2]).bool()
        return torch.where(keep_BSH, labels_BSH, torch.full_like(labels_BSH, IGNORE_INDEX))


def build_objective(spec: StageSpec, device: torch.device, earlier_outputs: dict[str, Path]) -> Objective:
    """The objective of `spec`; `earlier_outputs` maps stage name → its run dir (for the critic's head)."""
    if spec.objective == "baseline":
        return BaselineObjective(spec)
    if spec.objective == "critic":
        return CriticObjective(spec)
    if spec.objective == "verifiable":
        critic_dir = earlier_outputs.get("critic")
        return VerifiableObjective(spec, None if critic_dir is None else critic_dir / VALUE_HEAD_FILE)
    if spec.objective == "rho1":
        from wmtp.train.reference import load_reference_model

        # policy=: refuse a reference with another vocabulary or tokenizer before loading it.
        return Rho1Objective(spec, load_reference_model(spec.rho1.reference, device, policy=spec.model.path))
    raise ValueError(f"unknown objective {spec.objective!r}")
