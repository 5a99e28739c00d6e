"""FLOPs per token and MFU: the formula against PyTorch's own FLOP counter on a real model."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from wmtp.model.args import ModelArgs
from wmtp.model.transformer import Transformer
from wmtp.train.flops import block_params, flops_per_token, mfu, peak_flops

ARGS = ModelArgs(
    dim=64, n_layers=5, n_heads=4, n_kv_heads=2, vocab_size=300, multiple_of=32, n_future_tokens=3, max_seq_len=64
)


def test_block_params_match_the_model():
    model = Transformer(ARGS)
    for block in [*model.layers, *model.extra_heads]:
        assert sum(p.numel() for p in block.parameters()) == block_params(ARGS)


def test_dense_flops_equal_the_counted_matmuls_of_a_training_step():
    """Every matmul of forward + backward, counted by FlopCounterMode, is the formula's dense part
    exactly (integers: no tolerance) once the RMSNorm weights — elementwise, not matmuls — are left out;
    the output projection counts once per future-token head."""
    torch.manual_seed(0)
    model = Transformer(ARGS)
    batch, seq = 2, 16
    tokens = torch.randint(0, ARGS.vocab_size, (batch, seq))
    with FlopCounterMode(display=False) as counter:
        model(tokens).float().sum().backward()
    counted = counter.get_flop_counts()["Global"]
    matmuls = sum(n for op, n in counted.items() if "attention" not in str(op))
    attention_term = 12 * ARGS.n_layers * ARGS.n_heads * ARGS.head_dim * seq
    norms = 6 * ARGS.n_layers * 2 * ARGS.dim
    assert matmuls == (flops_per_token(ARGS, seq) - attention_term - norms) * batch * seq


def test_attention_term_equals_explicit_attention_forward_and_backward():
    """12·L·h·d·T per token: QKᵀ and AV, forward and backward, all L blocks (not halved for causality)."""
    seq, heads, head_dim = 16, ARGS.n_heads, ARGS.head_dim
    q, k, v = (torch.randn(1, heads, seq, head_dim, requires_grad=True) for _ in range(3))
    with FlopCounterMode(display=False) as counter:
        (torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v).sum().backward()
    per_block = counter.get_total_flops() / seq
    dense = flops_per_token(ARGS, 0)
    assert flops_per_token(ARGS, seq) - dense == ARGS.n_layers * per_block


def test_peak_table_override_and_mfu():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("cpu") is None
    assert peak_flops("cpu", override_tflops=2.0) == 2e12
    assert mfu(1e12, 2e12) == 0.5
    assert mfu(1e12, None) is None
