"""Model FLOPs per trained token and model FLOPs utilisation (MFU), the way torchtitan and PaLM count.

Per token, one training step (forward + backward = 3 × forward) costs

    6 · N_blocks  +  6 · n_heads_out · dim · vocab  +  12 · L · n_heads · head_dim · T

- `N_blocks`: parameters of every transformer block — trunk *and* the future-token heads (each head
  is a full block that every token passes through);
- the output projection is shared but applied once per future-token head, so it counts
  `n_future_tokens` times (the embedding lookup is a gather: no FLOPs);
- the attention scores and the weighted sum (`QKᵀ`, `AV`): `12 · L · n_heads · head_dim · T` for a
  sequence of length `T` over all `L` blocks (not halved for the causal mask, as PaLM and torchtitan).

MFU = achieved model FLOPs per second / the device's peak dense bf16 FLOPs per second. Peaks come
from `PEAK_BF16_FLOPS` (matched against `torch.cuda.get_device_name`) or `train.peak_tflops`.
"""

from __future__ import annotations

from typing import Optional

from wmtp.model.args import ModelArgs

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, in FLOP/s. Matched by
# substring, first match wins: the more specific names come first.
PEAK_BF16_FLOPS: list[tuple[str, float]] = [
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("H20", 148e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("MI300X", 1307e12),
    ("MI250X", 383e12),
]


def block_params(args: ModelArgs) -> int:
    """Parameters of one transformer block (attention, SwiGLU feed-forward, two RMSNorms)."""
    kv_dim = args.n_kv_heads * args.head_dim
    attention = args.dim * args.dim * 2 + args.dim * kv_dim * 2  # wq, wo, wk, wv
    feed_forward = 3 * args.dim * args.ffn_hidden_dim  # w1, w2, w3
    return attention + feed_forward + 2 * args.dim


def flops_per_token(args: ModelArgs, seq_len: float) -> float:
    """Training FLOPs (forward + backward) per token of a sequence of `seq_len` tokens."""
    dense = 6 * args.n_layers * block_params(args) + 6 * args.n_future_tokens * args.dim * args.vocab_size
    return float(dense + attention_coefficient(args, args.n_layers) * seq_len)


def attention_coefficient(args: ModelArgs, n_layers: int) -> int:
    """Forward + backward attention FLOPs of `n_layers` blocks per (token × sequence length)."""
    return 12 * n_layers * args.n_heads * args.head_dim


def training_flops(args: ModelArgs, n_tokens: float, sum_len_sq: float) -> float:
    """Forward + backward FLOPs of a batch of sequences with `n_tokens` tokens in all and Σ len² =
    `sum_len_sq` (each sequence's tokens attend over its own length: the attention term is per len²)."""
    return flops_per_token(args, 0) * n_tokens + attention_coefficient(args, args.n_layers) * sum_len_sq


def trunk_forward_flops(args: ModelArgs, n_tokens: float, sum_len_sq: float) -> float:
    """Forward-only FLOPs of the trunk (a frozen trunk under a trained value head: one third of 6N)."""
    blocks = args.n_trunk_layers
    return 2 * blocks * block_params(args) * n_tokens + attention_coefficient(args, blocks) / 3 * sum_len_sq


def peak_flops(device_name: str, override_tflops: Optional[float] = None) -> Optional[float]:
    """The device's peak dense bf16 FLOP/s: the override (in TFLOP/s), else the table; None if unknown."""
    if override_tflops is not None:
        return override_tflops * 1e12
    for name, peak in PEAK_BF16_FLOPS:
        if name.lower() in device_name.lower():
            return peak
    return None


def mfu(flops_per_s: float, peak: Optional[float]) -> Optional[float]:
    """Model FLOPs utilisation: achieved model FLOP/s over the device's peak (None without a known peak)."""
    if not peak:
        return None
    return flops_per_s / peak
