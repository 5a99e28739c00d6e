"""rho1: the reference model's excess loss Δ = L_θ(head 1) − L_ref selects (tokenskip) or weights tokens.

Both modes look at one micro-batch of one rank at a time ("the batch" of docs/architecture.md):
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

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from wmtp.errors import RuleError
from wmtp.train.objectives.base import (
    WEIGHT_METRICS,
    InputPath,
    MetricNames,
    Objective,
    ce_pooled_names,
    ce_total_names,
    lazy_module,
    mtp_loss,
    mtp_metric_names,
    per_head_weights,
    stat_names,
    stats,
    torch,
)
from wmtp.train.sections import Section, check_below

weights = lazy_module("wmtp.weighting.rho1")


class Rho1Section(Section):
    reference: Optional[str] = None  # model dir (our class) or `hf:<name or path>`
    mode: Literal["weighted", "tokenskip"] = "weighted"
    keep_ratio: float = Field(0.6, gt=0, le=1)  # tokenskip: fraction of tokens kept
    temperature: float = Field(1.0, gt=0)  # weighted: softmax temperature
    w_min: float = Field(0.0, ge=0)
    w_max: float = 3.0  # > w_min

    @model_validator(mode="after")
    def _check(self) -> "Rho1Section":
        check_below("w_min", self.w_min, "w_max", self.w_max)
        return self


def is_local(reference: Optional[str]) -> bool:
    """A model dir of ours (checked and built like the policy), not `hf:<name>`."""
    return bool(reference) and not reference.startswith("hf:")


class Rho1Objective(Objective):
    name = "rho1"
    section = "rho1"
    config = Rho1Section

    @classmethod
    def check_spec(cls, spec):
        if not spec.rho1.reference:
            raise RuleError("rho1.reference", "required for the rho1 objective (a model dir or hf:<name>)")

    @classmethod
    def input_paths(cls, spec):
        if is_local(spec.rho1.reference):
            return [InputPath("rho1.reference", spec.rho1.reference, "the reference model dir", model_dir=True)]
        return []

    @classmethod
    def check_inputs(cls, spec):
        from wmtp.model.reference import check_reference_fits

        check_reference_fits(spec.model.path, spec.rho1.reference)  # vocab and tokenizer, no weights

    @classmethod
    def declared_metrics(cls, spec, n_heads):
        mode = ["rho1/kept_fraction"] if spec.rho1.mode == "tokenskip" else WEIGHT_METRICS
        return MetricNames(
            train=[*mtp_metric_names(n_heads), *stat_names("excess_loss"), *mode],
            totals=ce_total_names(n_heads),
            pooled=ce_pooled_names(n_heads),
        )

    @classmethod
    def build(cls, spec, device, earlier_outputs):
        from wmtp.model.reference import load_reference_model

        # policy=: refuse a reference with another vocabulary or tokenizer before loading it.
        return cls(spec, load_reference_model(spec.rho1.reference, device, policy=spec.model.path))

    def __init__(self, spec, reference):
        super().__init__(spec)
        self.reference = reference.requires_grad_(False).eval()

    def target_counts(self, batch):
        counts = super().target_counts(batch)
        cfg = self.spec.rho1
        if cfg.mode != "tokenskip":
            return counts
        # Valid tokens x_j are the targets of head 1 (labels[:, j−1, 0]); the same tokens are kept
        # for every head. A kept token j ≤ k has no head-k label (it would need a prompt shorter
        # than k tokens, which the template never produces); it still counts, so every head's loss is
        # the mean over the kept tokens.
        n_valid = int((batch["labels"][:, :, 0] != mtp_loss.IGNORE_INDEX).sum())
        return torch.full_like(counts, float(weights.kept_count(n_valid, cfg.keep_ratio)))

    def reference_losses(self, batch):
        next_token_labels = batch["labels"][:, :, 0]
        with torch.no_grad():
            logits = self.reference(batch["input_ids"])
            logits = logits[:, :, 0] if logits.dim() == 4 else logits  # our class → head 1; HF → [B,S,V]
        return weights.token_losses(logits, next_token_labels)

    def compute(self, module, batch):
        cfg = self.spec.rho1
        labels = batch["labels"]
        h_trunk = module.model.forward_trunk(batch["input_ids"])
        with torch.no_grad():
            policy_losses = weights.token_losses(module.model.forward_head(h_trunk, 0), labels[:, :, 0])
        valid = labels[:, :, 0] != mtp_loss.IGNORE_INDEX
        excess = policy_losses - self.reference_losses(batch)
        # Δ is indexed by the position t that predicts x_{t+1}; shift to index by the token itself.
        excess_tok = torch.zeros_like(excess)
        excess_tok[:, 1:] = excess[:, :-1]
        valid_tok = torch.zeros_like(valid)
        valid_tok[:, 1:] = valid[:, :-1]
        metrics = stats.masked_stats("excess_loss", excess_tok, valid_tok)
        if cfg.mode == "tokenskip":
            keep = weights.tokenskip_mask(excess_tok, valid_tok, cfg.keep_ratio)
            metrics["rho1/kept_fraction"] = keep.sum().item() / max(1, valid_tok.sum().item())
            out = self.mtp_output(module, batch, h_trunk, labels=self.drop_tokens(labels, keep))
        else:
            token_weights = weights.soft_weights(excess_tok, valid_tok, cfg.temperature, cfg.w_min, cfg.w_max)
            metrics.update(stats.weight_stats(token_weights, valid_tok, cfg.w_min, cfg.w_max))
            out = self.mtp_output(module, batch, h_trunk, token_weights)
            out.token_weights = token_weights.detach()[valid_tok]
        out.metrics.update(metrics)
        return out

    @staticmethod
    def drop_tokens(labels_BSH, keep_tok_BS):
        """Ignore every head's label whose target token was not selected."""
        keep_BSH = per_head_weights(keep_tok_BS.float(), labels_BSH.shape[2]).bool()
        return torch.where(keep_BSH, labels_BSH, torch.full_like(labels_BSH, mtp_loss.IGNORE_INDEX))


OBJECTIVE = Rho1Objective
