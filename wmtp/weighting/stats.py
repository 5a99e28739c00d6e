"""Summary statistics of token weights and TD / excess-loss values for logging."""

from __future__ import annotations

import math

import torch


def masked_stats(prefix: str, values_BS: torch.Tensor, mask_BS: torch.Tensor) -> dict[str, float]:
    """mean / std / min / max of `values` over `mask`, keyed `<prefix>/<stat>`."""
    selected = values_BS.detach().float()[mask_BS]
    if selected.numel() == 0:
        return {}
    return {
        f"{prefix}/mean": selected.mean().item(),
        f"{prefix}/std": selected.std().item() if selected.numel() > 1 else 0.0,
        f"{prefix}/min": selected.min().item(),
        f"{prefix}/max": selected.max().item(),
    }


def weight_stats(weights_BS: torch.Tensor, mask_BS: torch.Tensor, w_min: float, w_max: float) -> dict[str, float]:
    """Weight statistics plus the fraction clipped at either bound and the normalised weight entropy."""
    stats = masked_stats("weight", weights_BS, mask_BS)
    selected = weights_BS.detach().float()[mask_BS]
    if selected.numel() == 0:
        return stats
    eps = 1e-6
    stats["weight/frac_clipped"] = ((selected <= w_min + eps) | (selected >= w_max - eps)).float().mean().item()
    probs = selected / selected.sum().clamp(min=eps)
    entropy = -(probs * torch.log(probs.clamp(min=1e-12))).sum().item()
    # Normalised to [0, 1]: 1 = uniform weights, lower = weight concentrated on few tokens.
    stats["weight/entropy"] = entropy / math.log(selected.numel()) if selected.numel() > 1 else 1.0
    return stats
