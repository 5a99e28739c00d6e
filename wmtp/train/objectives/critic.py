"""critic (stage 1 of verifiable): trunk frozen, the value head regressed on the returns G_j = γ^{T−j}·R.

Its checkpoints carry `value_head.safetensors`, which the verifiable stage loads.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from wmtp.train.objectives.base import (
    VALUE_POOLED,
    VALUE_TOTALS,
    MetricNames,
    Objective,
    ObjectiveOutput,
    flops,
    stat_names,
    stats,
    td,
    torch,
)
from wmtp.train.sections import Fraction, Section


class CriticSection(Section):
    value_loss: Literal["mse", "huber"] = "mse"
    huber_delta: float = Field(1.0, gt=0)
    gamma: Fraction = 1.0


class CriticObjective(Objective):
    name = "critic"
    section = "critic"
    config = CriticSection
    uses_value_head = True
    # Besides the validation loss: unstable gradient norms (every step) and the validation set's
    # prediction variance leaving [pred_var_min, pred_var_max] (wmtp.train.early_stopping).
    early_stopping_signals = ("loss", "grad_norm", "pred_var")
    default_monitor = "val/loss"  # the value loss: the only loss the critic trains

    @classmethod
    def check_spec(cls, spec):
        if spec.eval is not None:
            # The critic trains only the value head: its policy is the initial model, so evaluating it
            # measures nothing the experiment changed. Dropped rather than refused, so that experiment-
            # wide settings (smoke's `eval: {limit: 4}`, `--set eval.limit=…`) may name every stage.
            spec.eval = None

    @classmethod
    def declared_metrics(cls, spec, n_heads):
        return MetricNames(
            train=["loss/value", "value/explained_variance", "value/pred_var", *stat_names("value")],
            totals=VALUE_TOTALS,
            pooled=VALUE_POOLED,
        )

    def prepare(self, module, device):
        module.model.requires_grad_(False)

    def model_flops(self, args, n_tokens, sum_len_sq):
        return flops.trunk_forward_flops(args, n_tokens, sum_len_sq)  # the frozen trunk runs forward only

    def compute(self, module, batch):
        cfg = self.spec.critic
        with torch.no_grad():
            h_trunk = module.model.forward_trunk(batch["input_ids"])
        values = module.values(h_trunk)
        mask = batch["response_mask"]
        returns = td.value_returns(mask, batch["is_correct"], cfg.gamma)
        loss = td.value_loss(
            values, returns, mask, cfg.value_loss, cfg.huber_delta, normalizer=batch.get("num_response")
        )
        selected = values.detach()[mask]
        metrics = {
            "loss/value": loss.item(),
            "value/explained_variance": td.explained_variance(values, returns, mask),
            "value/pred_var": selected.var().item() if selected.numel() > 1 else 0.0,
            **stats.masked_stats("value", values, mask),
        }
        totals = {} if module.training else td.explained_variance_sums(values, returns, mask)
        return ObjectiveOutput(loss=loss, metrics=metrics, totals=totals)


OBJECTIVE = CriticObjective
