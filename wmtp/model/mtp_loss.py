"""Multi-token-prediction loss: per-token weights, −100 labels, one term per head.

Head `k` at position `t` predicts `x_{t+k+1}`; `labels_BSH[:, t, k]` holds that token or −100.
Per head: `Σ w·CE / n_valid`; the total is `Σ_k α_k · loss_k` with `α` = head weights (uniform mean
by default).

`mtp_loss_memory_efficient` is the Gloeckle et al. (2024) schedule: the trunk runs once, then each head
runs forward *and* backward before the next one starts, accumulating the gradient at a detached copy
of the trunk output; the trunk's backward runs last with that gradient. Peak memory therefore holds a
single head's `[B, S, V]` logits instead of all `H` of them, with the same loss and gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


@dataclass
class MTPLoss:
    total: torch.Tensor  # scalar (detached in the memory-efficient path)
    per_head: torch.Tensor  # [H] unweighted mean loss of each head (detached)
    extra: Optional[torch.Tensor] = None  # value of `extra_loss_fn` if one was given (detached)


def head_weights_or_uniform(n_heads: int, head_weights: Optional[Sequence[float]]) -> list[float]:
    if head_weights is None:
        return [1.0 / n_heads] * n_heads
    if len(head_weights) != n_heads:
        raise ValueError(f"head_weights has {len(head_weights)} entries for {n_heads} heads")
    return [float(a) for a in head_weights]


def head_loss(
    logits_BSV: torch.Tensor,
    labels_BS: torch.Tensor,
    weights_BS: Optional[torch.Tensor] = None,
    num_valid: Optional[torch.Tensor | float] = None,
) -> torch.Tensor:
    """Weighted CE of one head: `Σ_valid w·CE / num_valid` (num_valid defaults to the local count)."""
    ce = F.cross_entropy(
        logits_BSV.reshape(-1, logits_BSV.shape[-1]).float(),
        labels_BS.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )
    if weights_BS is not None:
        ce = ce * weights_BS.reshape(-1).detach().to(ce.dtype)
    if num_valid is None:
        num_valid = (labels_BS != IGNORE_INDEX).sum()
    return ce.sum() / torch.clamp(torch.as_tensor(num_valid, device=ce.device, dtype=ce.dtype), min=1.0)


def mtp_loss(
    logits_BSHV: torch.Tensor,
    labels_BSH: torch.Tensor,
    weights_BSH: Optional[torch.Tensor] = None,
    head_weights: Optional[Sequence[float]] = None,
    num_valid_H: Optional[torch.Tensor] = None,
) -> MTPLoss:
    """Naive loss from all heads' logits at once (used for evaluation and as the reference)."""
    n_heads = logits_BSHV.shape[2]
    alphas = head_weights_or_uniform(n_heads, head_weights)
    per_head = torch.stack(
        [
            head_loss(
                logits_BSHV[:, :, k],
                labels_BSH[:, :, k],
                None if weights_BSH is None else weights_BSH[:, :, k],
                None if num_valid_H is None else num_valid_H[k],
            )
            for k in range(n_heads)
        ]
    )
    total = sum(a * loss for a, loss in zip(alphas, per_head))
    return MTPLoss(total=total, per_head=per_head.detach())


def mtp_loss_memory_efficient(
    model,
    tokens_BS: torch.Tensor,
    labels_BSH: torch.Tensor,
    weights_BSH: Optional[torch.Tensor] = None,
    head_weights: Optional[Sequence[float]] = None,
    num_valid_H: Optional[torch.Tensor] = None,
    extra_loss_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    loss_scale: float = 1.0,
) -> MTPLoss:
    """Compute the MTP loss *and run its backward*, one head at a time.

    `model` provides `forward_trunk(tokens)` and `forward_head(h_trunk, k)` (see `Transformer`).
    `extra_loss_fn(h_trunk)` adds a loss on the trunk output (e.g. the value head's) to the same
    backward. `loss_scale` multiplies every gradient (e.g. 1/grad_accum_steps); the returned values
    are unscaled. Gradients accumulate into `.grad` exactly as `mtp_loss(...).total.backward()` would.
    """
    n_heads = labels_BSH.shape[2]
    alphas = head_weights_or_uniform(n_heads, head_weights)
    h_trunk = model.forward_trunk(tokens_BS)
    h_detached = h_trunk.detach().requires_grad_(h_trunk.requires_grad)
    per_head = []
    for k in range(n_heads):
        logits_BSV = model.forward_head(h_detached, k)
        loss_k = head_loss(
            logits_BSV,
            labels_BSH[:, :, k],
            None if weights_BSH is None else weights_BSH[:, :, k],
            None if num_valid_H is None else num_valid_H[k],
        )
        if loss_k.requires_grad:
            (alphas[k] * loss_scale * loss_k).backward()  # frees this head's logits before the next
        per_head.append(loss_k.detach())
        del logits_BSV
    total = sum(a * loss for a, loss in zip(alphas, per_head))
    extra = None
    if extra_loss_fn is not None:
        extra_loss = extra_loss_fn(h_detached)
        if extra_loss.requires_grad:
            (loss_scale * extra_loss).backward()
        extra = extra_loss.detach()
        total = total + extra
    if h_trunk.requires_grad and h_detached.grad is not None:
        h_trunk.backward(h_detached.grad)
    return MTPLoss(total=total, per_head=torch.stack(per_head), extra=extra)


def mtp_loss_recomputed(
    model,
    h_trunk_BSD: torch.Tensor,
    labels_BSH: torch.Tensor,
    weights_BSH: Optional[torch.Tensor] = None,
    head_weights: Optional[Sequence[float]] = None,
    num_valid_H: Optional[torch.Tensor] = None,
) -> MTPLoss:
    """The MTP loss as one differentiable tensor with one head's logits alive at a time.

    Each head (block → norm → output → CE) runs under activation checkpointing, so its `[B, S, V]`
    logits are freed right after its loss is computed and recomputed, head by head, during the single
    `backward()` call. Same loss and gradients as `mtp_loss`; costs one extra forward of the heads.
    Unlike `mtp_loss_memory_efficient` it needs only one backward call, which is what DDP's
    gradient buckets and FSDP's reduce-scatter expect — the training loop uses this one.
    """
    from torch.utils.checkpoint import checkpoint

    n_heads = labels_BSH.shape[2]
    alphas = head_weights_or_uniform(n_heads, head_weights)

    def one_head(h, k):
        return head_loss(
            model.forward_head(h, k),
            labels_BSH[:, :, k],
            None if weights_BSH is None else weights_BSH[:, :, k],
            None if num_valid_H is None else num_valid_H[k],
        )

    per_head = [
        checkpoint(one_head, h_trunk_BSD, k, use_reentrant=False) if torch.is_grad_enabled() else one_head(h_trunk_BSD, k)
        for k in range(n_heads)
    ]
    total = sum(a * loss for a, loss in zip(alphas, per_head))
    return MTPLoss(total=total, per_head=torch.stack([loss.detach() for loss in per_head]))
