"""TD-error token weights for the verifiable experiment (docs/architecture.md, "Token weights").

Per sequence with response positions j (token x_j is a response token), last response position T and
reward R ∈ {0, 1}:
    δ_j = γ·V_j − V_{j−1}        for response positions j < T
    δ_T = R − V_{T−1}            (V(terminal) = 0, no reward before the end)
    w_j = clip(exp(δ_j / β), w_min, w_max)
Value targets are the Monte-Carlo returns G_j = γ^{T−j}·R on response positions.
Everything here is computed without gradient except `value_loss`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def last_response_positions(response_mask_BS: torch.Tensor) -> torch.Tensor:
    """Index T of the last response token per row (−1 when a row has none)."""
    positions = torch.arange(response_mask_BS.shape[1], device=response_mask_BS.device)
    return torch.where(response_mask_BS, positions, -1).max(dim=1).values


def td_errors(
    values_BS: torch.Tensor, response_mask_BS: torch.Tensor, rewards_B: torch.Tensor, gamma: float
) -> torch.Tensor:
    """δ_j on response positions (0 elsewhere). `values_BS[:, t]` = V of prefix x_0..x_t."""
    values = values_BS.detach().float()
    prev_values = torch.zeros_like(values)
    prev_values[:, 1:] = values[:, :-1]
    last = last_response_positions(response_mask_BS)
    is_last = torch.zeros_like(response_mask_BS)
    has_response = last >= 0
    is_last[has_response, last[has_response]] = True
    bootstrap = torch.where(is_last, rewards_B.float()[:, None], gamma * values)
    return torch.where(response_mask_BS, bootstrap - prev_values, torch.zeros_like(values))


def td_weights(
    deltas_BS: torch.Tensor, response_mask_BS: torch.Tensor, beta: float, w_min: float, w_max: float
) -> torch.Tensor:
    """w_j = clip(exp(δ_j/β), w_min, w_max) on response positions; 1 elsewhere (those carry no label)."""
    weights = torch.exp(deltas_BS / beta).clamp(w_min, w_max)
    return torch.where(response_mask_BS, weights, torch.ones_like(weights))


def value_returns(response_mask_BS: torch.Tensor, rewards_B: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_j = γ^{T−j}·R on response positions (0 elsewhere)."""
    positions = torch.arange(response_mask_BS.shape[1], device=response_mask_BS.device)
    steps_to_end = (last_response_positions(response_mask_BS)[:, None] - positions).clamp(min=0).float()
    returns = rewards_B.float()[:, None] * torch.pow(torch.tensor(gamma), steps_to_end)
    return torch.where(response_mask_BS, returns, torch.zeros_like(returns))


def value_loss(
    values_BS: torch.Tensor,
    returns_BS: torch.Tensor,
    response_mask_BS: torch.Tensor,
    kind: str = "mse",
    huber_delta: float = 1.0,
    anchor_values_BS: torch.Tensor | None = None,
    clip: float | None = None,
    normalizer: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Mean value loss over response positions (sum / `normalizer`, default the local count).

    With `anchor_values_BS` (the frozen stage-1 head's predictions) and `clip`, the prediction is
    clipped to anchor ± clip and the larger of the clipped / unclipped losses is taken (PPO-style),
    so the head cannot drift far from what the critic learned in one update.
    """

    def elementwise(pred):
        if kind == "huber":
            return F.huber_loss(pred, returns_BS, reduction="none", delta=huber_delta)
        return (pred - returns_BS).square()

    losses = elementwise(values_BS)
    if anchor_values_BS is not None and clip is not None:
        anchor = anchor_values_BS.detach()
        clipped = anchor + (values_BS - anchor).clamp(-clip, clip)
        losses = torch.maximum(losses, elementwise(clipped))
    mask = response_mask_BS.float()
    count = mask.sum() if normalizer is None else torch.as_tensor(normalizer, dtype=mask.dtype)
    return (losses * mask).sum() / count.clamp(min=1.0)


def explained_variance(values_BS: torch.Tensor, returns_BS: torch.Tensor, mask_BS: torch.Tensor) -> float:
    """1 − Var[G − V] / Var[G] over masked positions (nan when the returns do not vary)."""
    v, g = values_BS.detach().float()[mask_BS], returns_BS.float()[mask_BS]
    if g.numel() < 2 or g.var() == 0:
        return float("nan")
    return float(1.0 - (g - v).var() / g.var())


# Sufficient statistics of the explained variance: summed over batches and ranks, they give the
# explained variance of the whole validation set (a per-batch value is nan whenever one batch's
# returns do not vary, e.g. γ = 1 and a single label per batch).
EV_SUM_KEYS = ("value/n", "value/sum_g", "value/sum_g2", "value/sum_r", "value/sum_r2", "value/sum_v", "value/sum_v2")


def explained_variance_sums(
    values_BS: torch.Tensor, returns_BS: torch.Tensor, mask_BS: torch.Tensor
) -> dict[str, float]:
    """n, Σg, Σg², Σr, Σr², Σv, Σv² over masked positions, with g = G, v = V and r = G − V (float64)."""
    g = returns_BS.detach().double()[mask_BS]
    v = values_BS.detach().double()[mask_BS]
    r = g - v
    stats = (g.numel(), g.sum(), g.square().sum(), r.sum(), r.square().sum(), v.sum(), v.square().sum())
    return {key: float(value) for key, value in zip(EV_SUM_KEYS, stats)}


def explained_variance_from_sums(sums: dict[str, float]) -> float:
    """1 − Var[G − V] / Var[G] from `explained_variance_sums` added up (nan when G does not vary)."""
    n = sums["value/n"]
    if n < 2:
        return float("nan")
    var_g = sums["value/sum_g2"] - sums["value/sum_g"] ** 2 / n
    var_r = sums["value/sum_r2"] - sums["value/sum_r"] ** 2 / n
    if var_g <= 1e-12 * max(1.0, sums["value/sum_g2"]):
        return float("nan")
    return 1.0 - var_r / var_g


def prediction_variance_from_sums(sums: dict[str, float]) -> float:
    """Var[V] (population) over every masked position from `explained_variance_sums` added up."""
    n = sums["value/n"]
    if n < 1:
        return float("nan")
    return max(sums["value/sum_v2"] / n - (sums["value/sum_v"] / n) ** 2, 0.0)
