"""Multi-token-prediction loss: per-token weights, −100 labels, one term per head.

Head `k` at position `t` predicts `x_{t+k+1}`; `labels_BSH[:, t, k]` holds that token or −100.
Per head: `Σ w·CE / n_valid`; the total is `Σ_k α_k · loss_k` with `α` = head weights (uniform mean
by default).

`mtp_loss_memory_efficient` is the Gloeckle et al. (2024) schedule: the trunk runs once, then each head
runs forward *and* backward before the next one starts, accumulating the gradient at a detached copy
of the trunk output; the trunk's backward runs last with that gradient. Within a head the same trick
is applied once more: the shared norm + output projection + cross-entropy run over chunks of tokens,
so peak memory holds one chunk's `[n, V]` logits instead of all `H` heads' `[B, S, V]` logits, with
the same loss and gradients.
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
    per_head: torch.Tensor  # [H] loss of each head: Σ w·CE / n_valid with the token weights given (detached)
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

    `model` provides `forward_trunk(tokens)`, `head_hidden(h_trunk, k)` and `output_logits(z)` (see
    `Transformer`). `extra_loss_fn(h_trunk)` adds a loss on the trunk output (e.g. the value head's)
    to the same backward. `loss_scale` multiplies every gradient (e.g. 1/grad_accum_steps); the
    returned values are unscaled. Gradients accumulate into `.grad` exactly as
    `mtp_loss(...).total.backward()` would.
    """
    n_heads = labels_BSH.shape[2]
    alphas = head_weights_or_uniform(n_heads, head_weights)
    h_trunk = model.forward_trunk(tokens_BS)
    h_detached = h_trunk.detach().requires_grad_(h_trunk.requires_grad)
    per_head = [
        _head_loss_with_backward(
            model,
            h_detached,
            k,
            labels_BSH[:, :, k],
            None if weights_BSH is None else weights_BSH[:, :, k],
            None if num_valid_H is None else num_valid_H[k],
            grad_scale=alphas[k] * loss_scale,
        )
        for k in range(n_heads)
    ]
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


def _head_loss_with_backward(
    model,
    h_trunk_BSD: torch.Tensor,
    head_index: int,
    labels_BS: torch.Tensor,
    weights_BS: Optional[torch.Tensor],
    num_valid: Optional[torch.Tensor | float],
    grad_scale: float,
) -> torch.Tensor:
    """Loss of one head (detached), its backward already run, the cross-entropy in token chunks.

    The head block runs once; the shared norm + output projection + cross-entropy then run on chunks
    of its detached output, each chunk's backward accumulating the gradient at that output (and at
    `norm`/`output`); the head block's backward runs last. A chunk holds at most D tokens, so its
    `[n, V]` logits are no larger than the `[V, D]` gradient of `output` that this backward holds
    anyway: the vocabulary-sized activations no longer set the peak.
    """
    z_BSD = model.head_hidden(h_trunk_BSD, head_index)
    z_detached = z_BSD.detach().requires_grad_(z_BSD.requires_grad)
    z_ND = z_detached.flatten(0, -2)  # a view: chunk gradients land in z_detached.grad
    labels_N = labels_BS.reshape(-1)
    weights_N = None if weights_BS is None else weights_BS.reshape(-1)
    if num_valid is None:  # every chunk divides by the head's total count, as the naive loss does
        num_valid = (labels_N != IGNORE_INDEX).sum()
    chunk = z_ND.shape[-1]
    loss = torch.zeros((), dtype=torch.float32, device=z_ND.device)
    for start in range(0, z_ND.shape[0], chunk):
        rows = slice(start, start + chunk)
        loss_chunk = head_loss(
            model.output_logits(z_ND[rows]),
            labels_N[rows],
            None if weights_N is None else weights_N[rows],
            num_valid,
        )
        if loss_chunk.requires_grad:
            (grad_scale * loss_chunk).backward()  # frees this chunk's logits before the next
        loss = loss + loss_chunk.detach()
    if z_BSD.requires_grad and z_detached.grad is not None:
        z_BSD.backward(z_detached.grad)
    return loss


def mtp_loss_recomputed(
    model,
    h_trunk_BSD: torch.Tensor,
    labels_BSH: torch.Tensor,
    weights_BSH: Optional[torch.Tensor] = None,
    head_weights: Optional[Sequence[float]] = None,
    num_valid_H: Optional[torch.Tensor] = None,
) -> MTPLoss:
    """The MTP loss as one differentiable tensor with one chunk of one head's logits alive at a time.

    Each head block, and each chunk of at most D tokens of its norm → output → CE, runs under
    activation checkpointing: only the heads' `[B, S, D]` outputs stay alive after the forward, and
    the `[n, V]` logits are recomputed chunk by chunk during the single `backward()` call. Same loss
    and gradients as `mtp_loss`; costs one extra forward of the heads. Unlike
    `mtp_loss_memory_efficient` it needs only one backward call, which is what DDP's gradient buckets
    and FSDP's reduce-scatter expect — the training loop uses this one.
    """
    from torch.utils.checkpoint import checkpoint

    n_heads = labels_BSH.shape[2]
    alphas = head_weights_or_uniform(n_heads, head_weights)

    def maybe_checkpoint(fn, *args):
        return checkpoint(fn, *args, use_reentrant=False) if torch.is_grad_enabled() else fn(*args)

    def chunk_loss(z_ND, labels_N, weights_N, num_valid):
        return head_loss(model.output_logits(z_ND), labels_N, weights_N, num_valid)

    per_head = []
    for k in range(n_heads):
        z_ND = maybe_checkpoint(model.head_hidden, h_trunk_BSD, k).flatten(0, -2)
        labels_N = labels_BSH[:, :, k].reshape(-1)
        weights_N = None if weights_BSH is None else weights_BSH[:, :, k].reshape(-1)
        num_valid = (labels_N != IGNORE_INDEX).sum() if num_valid_H is None else num_valid_H[k]
        chunk = z_ND.shape[-1]
        chunk_losses = [
            maybe_checkpoint(
                chunk_loss,
                z_ND[start : start + chunk],
                labels_N[start : start + chunk],
                None if weights_N is None else weights_N[start : start + chunk],
                num_valid,
            )
            for start in range(0, z_ND.shape[0], chunk)
        ]
        per_head.append(torch.stack(chunk_losses).sum())
    total = sum(a * loss for a, loss in zip(alphas, per_head))
    return MTPLoss(total=total, per_head=torch.stack([loss.detach() for loss in per_head]))
