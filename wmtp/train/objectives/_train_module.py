"""`TrainModule`: the policy and its value head, the unit DDP / FSDP wrap (imports torch; not an objective)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from torch import nn

from wmtp.model import Transformer, ValueHead

if TYPE_CHECKING:
    import torch

    from wmtp.train.objectives.base import Objective, ObjectiveOutput


class TrainModule(nn.Module):
    """The policy and, when the objective has one, its value head: the unit DDP / FSDP wrap.

    Every objective runs inside `forward` (so DDP / FSDP see one forward per micro-step)."""

    def __init__(self, model: Transformer, value_head: Optional[ValueHead] = None):
        super().__init__()
        self.model = model
        self.value_head = value_head

    def forward(self, batch: dict, objective: "Objective") -> "ObjectiveOutput":
        return objective.compute(self, batch)

    def values(self, h_trunk_BSD: "torch.Tensor") -> "torch.Tensor":
        return self.value_head(self.model.norm(h_trunk_BSD))
