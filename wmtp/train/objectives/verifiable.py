"""verifiable (stage 2): TD-weighted MTP + value_coef · value loss (clipped around the frozen stage-1 head).

Token weights clip(exp(δ/β), w_min, w_max) from the TD errors of the value head, which starts from the
critic stage's (`td.value_head`, or the final checkpoint of the experiment's `critic` stage).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, model_validator

from wmtp.errors import CheckpointError
from wmtp.train.objectives.base import (
    VALUE_HEAD_FILE,
    VALUE_POOLED,
    VALUE_TOTALS,
    WEIGHT_METRICS,
    InputPath,
    MetricNames,
    Objective,
    ce_pooled_names,
    ce_total_names,
    mtp_metric_names,
    stat_names,
    stats,
    td,
    torch,
)
from wmtp.train.sections import Fraction, Section, check_below

CRITIC_STAGE = "critic"  # the earlier stage whose final checkpoint holds the value head


class TDSection(Section):
    gamma: Fraction = 1.0
    beta: float = Field(0.9, gt=0)  # temperature of exp(δ/β)
    w_min: float = Field(0.1, ge=0)
    w_max: float = 5.0  # > w_min
    value_coef: float = Field(0.5, ge=0)
    value_loss: Literal["mse", "huber"] = "mse"
    huber_delta: float = Field(1.0, gt=0)
    value_clip: Optional[float] = Field(0.2, gt=0)  # clip around the frozen stage-1 head; None = no anchor
    value_head: Optional[str] = None  # critic's value_head.safetensors; None = from an earlier stage

    @model_validator(mode="after")
    def _check(self) -> "TDSection":
        check_below("w_min", self.w_min, "w_max", self.w_max)
        return self


def load_value_head(path: Path, dim: int):
    """The critic's `ValueHead` from its safetensors file, checked against the model width `dim`."""
    from safetensors.torch import load_file

    from wmtp.model import ValueHead

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
    name = "verifiable"
    section = "td"
    config = TDSection
    uses_value_head = True
    instead_of_stage = "td.value_head"

    @classmethod
    def input_paths(cls, spec):
        if spec.td.value_head:
            return [InputPath("td.value_head", spec.td.value_head, "the critic's value_head.safetensors")]
        return []

    @classmethod
    def needs_stage(cls, spec):
        return None if spec.td.value_head else CRITIC_STAGE

    @classmethod
    def declared_metrics(cls, spec, n_heads):
        return MetricNames(
            train=[
                *mtp_metric_names(n_heads),
                "loss/value",
                "value/explained_variance",
                *stat_names("td"),
                *WEIGHT_METRICS,
            ],
            totals=[*ce_total_names(n_heads), *VALUE_TOTALS],
            pooled=[*ce_pooled_names(n_heads), *VALUE_POOLED],
        )

    @classmethod
    def build(cls, spec, device, earlier_outputs):
        critic_dir = earlier_outputs.get(CRITIC_STAGE)
        return cls(spec, None if critic_dir is None else critic_dir / VALUE_HEAD_FILE)

    def __init__(self, spec, value_head_path: Optional[Path] = None):
        super().__init__(spec)
        path = spec.td.value_head or value_head_path
        if path is None:
            raise CheckpointError(
                "td.value_head: no critic value head — run the critic stage first (stages: [critic, verifiable]) "
                "or set td.value_head to a value_head.safetensors"
            )
        self.value_head_path = Path(path)
        self.anchor = None  # the frozen stage-1 head the value loss is clipped around (td.value_clip)

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
        v_loss = td.value_loss(
            values,
            returns,
            mask,
            cfg.value_loss,
            cfg.huber_delta,
            anchor_values,
            cfg.value_clip,
            normalizer=batch.get("num_response"),
        )
        out = self.mtp_output(module, batch, h_trunk, weights, extra=cfg.value_coef * v_loss)
        out.metrics.update(
            {
                "loss/value": v_loss.item(),
                "value/explained_variance": td.explained_variance(values, returns, mask),
                **stats.masked_stats("td", deltas, mask),
                **stats.weight_stats(weights, mask, cfg.w_min, cfg.w_max),
            }
        )
        out.token_weights = weights.detach()[mask]
        if not module.training:
            out.totals.update(td.explained_variance_sums(values, returns, mask))
        return out


OBJECTIVE = VerifiableObjective
