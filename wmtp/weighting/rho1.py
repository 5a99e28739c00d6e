"""Rho-1 token weights from the reference model's excess loss (docs/architecture.md, "Token weights").

Δ_j = L_θ(x_j) − L_ref(x_j), with L_θ from head 1 (detached) and L_ref from the reference LM.
- tokenskip: w_j = 1 for the top `keep_ratio` of valid tokens in the batch by Δ, else 0; the loss is
  normalised by the number kept (the caller turns dropped tokens into ignored labels). Exactly
  `kept_count(n_valid, keep_ratio)` tokens are kept, so the normaliser is known before Δ is.
- weighted: w = softmax(Δ/τ) over the batch's valid tokens, scaled to mean 1, clipped to [w_min, w_max].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wmtp.model.mtp_loss import IGNORE_INDEX


def token_losses(logits_BSV: torch.Tensor, labels_BS: torch.Tensor) -> torch.Tensor:
    """Per-token CE `[B, S]` (0 where the label is ignored), without gradient."""
    with torch.no_grad():
        ce = F.cross_entropy(
            logits_BSV.reshape(-1, logits_BSV.shape[-1]).float(),
            labels_BS.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="none",
        )
    return ce.view(labels_BS.shape)


def kept_count(n_valid: int, keep_ratio: float) -> int:
    """How many of `n_valid` tokens tokenskip keeps: round(keep_ratio · n_valid), at least one."""
    return 0 if n_valid == 0 else max(1, int(round(keep_ratio * n_valid)))


def tokenskip_mask(excess_BS: torch.Tensor, valid_BS: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """Boolean mask of exactly `kept_count` valid tokens: the top `keep_ratio` by excess loss."""
    n_keep = kept_count(int(valid_BS.sum()), keep_ratio)
    if n_keep == 0:
        return torch.zeros_like(valid_BS)
    scores = torch.where(valid_BS, excess_BS, torch.full_like(excess_BS, -float("inf")))
    threshold = scores.flatten().topk(n_keep).values[-1]
    keep = valid_BS & (scores >= threshold)
    if int(keep.sum()) > n_keep:  # ties at the threshold: keep the first n_keep in row-major order
        order = torch.cumsum(keep.flatten().long(), 0).view_as(keep)
        keep &= order <= n_keep
    return keep


def soft_weights(
    excess_BS: torch.Tensor, valid_BS: torch.Tensor, temperature: float, w_min: float, w_max: float
) -> torch.Tensor:
    """softmax(Δ/τ) over valid tokens, scaled to mean 1 and clipped; 1 on invalid positions."""
    scores = torch.where(valid_BS, excess_BS / temperature, torch.full_like(excess_BS, -float("inf")))
    n_valid = valid_BS.sum().clamp(min=1)
    probs = torch.softmax(scores.flatten(), dim=0).view_as(excess_BS)
    weights = (probs * n_valid).clamp(w_min, w_max)
    return torch.where(valid_BS, weights, torch.ones_like(weights))
