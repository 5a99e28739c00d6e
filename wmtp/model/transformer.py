"""LLaMA multi-token-prediction transformer in Meta's 7B_1T_4 layout, pure PyTorch.

Layout (parameter names match Meta's consolidated.pth exactly):
  tok_embeddings                     token embedding
  layers[0 .. n_layers-n_future-1]   shared trunk (`layers[:-1]`)
  layers[-1]                         head 1 (next token)
  extra_heads[0 .. n_future-2]       heads 2..n_future
  norm, output                       shared by every head (output is not tied to the embedding)

Every head is a full transformer block applied to the *trunk output*.
`logits[:, t, k]` predicts token `t + k + 1`.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from wmtp.device import has_complex_kernels
from wmtp.model.args import ModelArgs


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 (as Meta does) so bf16 training keeps the same statistics.
        x_float = x.float()
        normed = x_float * torch.rsqrt(x_float.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def rope_tables(head_dim: int, max_seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables `[max_seq_len, head_dim/2]` for rotary embeddings (float32, real-valued)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x_BSND: torch.Tensor, cos_SD: torch.Tensor, sin_SD: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x[2i], x[2i+1]) by the RoPE angles — Meta's complex-number convention.

    Adjacent pairs viewed as complex numbers times `cos + i·sin` is one fused multiply forward and
    backward (about 4x faster than the real-arithmetic form on CPU). The complex factor is built here
    from the real tables, so no complex tensor is ever a buffer or in a state dict. Computed in float32
    as Meta does.
    """
    if not has_complex_kernels(x_BSND.device):  # MPS: the same rotation in real arithmetic
        return _apply_rope_real(x_BSND, cos_SD, sin_SD)
    x_complex = torch.view_as_complex(x_BSND.float().unflatten(-1, (-1, 2)))
    rotation = torch.complex(cos_SD.float(), sin_SD.float())[None, :, None, :]
    return torch.view_as_real(x_complex * rotation).flatten(-2).type_as(x_BSND)


def _apply_rope_real(x_BSND: torch.Tensor, cos_SD: torch.Tensor, sin_SD: torch.Tensor) -> torch.Tensor:
    """`apply_rope` in real arithmetic (for devices without complex kernels)."""
    x_even, x_odd = x_BSND.float().unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos_SD.float()[None, :, None, :], sin_SD.float()[None, :, None, :]
    rotated = torch.stack((x_even * cos - x_odd * sin, x_even * sin + x_odd * cos), dim=-1)
    return rotated.flatten(-2).type_as(x_BSND)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads = args.n_heads
        self.n_kv_heads = args.n_kv_heads
        self.head_dim = args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * self.head_dim, args.dim, bias=False)

    def forward(
        self,
        x_BSD: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: Optional["KVCacheLayer"] = None,
    ) -> torch.Tensor:
        bsz, seqlen, _ = x_BSD.shape
        q = self.wq(x_BSD).view(bsz, seqlen, self.n_heads, self.head_dim)
        k = self.wk(x_BSD).view(bsz, seqlen, self.n_kv_heads, self.head_dim)
        v = self.wv(x_BSD).view(bsz, seqlen, self.n_kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, heads, S, head_dim]
        if kv_cache is not None:
            k, v = kv_cache.append(k, v)
        gqa = self.n_kv_heads != self.n_heads  # each kv head serves n_heads/n_kv_heads queries
        if kv_cache is None or k.shape[2] == seqlen:
            # SDPA's GQA mode reads the shared kv heads in place instead of materialising copies.
            out = F.scaled_dot_product_attention(q, k, v, is_causal=seqlen > 1, enable_gqa=gqa)
        else:  # decoding with a cache: new queries sit at the end of the key sequence
            if gqa:  # with a mask, fused kernels lack GQA support, so repeat the kv heads
                repeat = self.n_heads // self.n_kv_heads
                k = k.repeat_interleave(repeat, dim=1)
                v = v.repeat_interleave(repeat, dim=1)
            offset = k.shape[2] - seqlen
            mask = torch.ones(seqlen, k.shape[2], dtype=torch.bool, device=q.device).tril(offset)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.wo(out.transpose(1, 2).reshape(bsz, seqlen, -1))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args.dim, args.ffn_hidden_dim)
        self.attention_norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, eps=args.norm_eps)

    def forward(self, x, cos, sin, kv_cache=None):
        h = x + self.attention(self.attention_norm(x), cos, sin, kv_cache)
        return h + self.feed_forward(self.ffn_norm(h))


class KVCacheLayer:
    """Keys/values of one block for incremental decoding (used by `wmtp.eval`, never in training)."""

    def __init__(self):
        self.k: Optional[torch.Tensor] = None
        self.v: Optional[torch.Tensor] = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v

    def truncate(self, length: int) -> None:
        """Drop cached positions at and after `length` (rejected speculative tokens)."""
        if self.k is not None:
            self.k, self.v = self.k[:, :, :length], self.v[:, :, :length]

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[2]


class Transformer(nn.Module):
    """Multi-token-prediction LLaMA. `model(tokens)` → logits `[B, S, n_heads_used, V]` (float32)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.n_future_tokens = args.n_future_tokens
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(
            TransformerBlock(args) for _ in range(args.n_layers - args.n_future_tokens + 1)
        )
        self.extra_heads = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_future_tokens - 1))
        self.norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        cos, sin = rope_tables(args.head_dim, args.max_seq_len, args.rope_theta)
        # Non-persistent: RoPE tables are derived from params, never stored in a checkpoint.
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    @torch.no_grad()
    def rebuild_rope_tables(self, device=None) -> None:
        """Recompute the RoPE buffers (after loading weights onto a model built on the meta device)."""
        cos, sin = rope_tables(self.args.head_dim, self.args.max_seq_len, self.args.rope_theta)
        device = device if device is not None else self.tok_embeddings.weight.device
        self.register_buffer("rope_cos", cos.to(device), persistent=False)
        self.register_buffer("rope_sin", sin.to(device), persistent=False)

    @property
    def heads(self) -> list[nn.Module]:
        """Prediction heads in order: head 1 (`layers[-1]`), then `extra_heads`."""
        return [self.layers[-1], *self.extra_heads]

    def _rope(self, start_pos: int, seqlen: int) -> tuple[torch.Tensor, torch.Tensor]:
        end = start_pos + seqlen
        if end > self.rope_cos.shape[0]:
            raise ValueError(f"sequence end {end} exceeds max_seq_len={self.rope_cos.shape[0]}")
        return self.rope_cos[start_pos:end], self.rope_sin[start_pos:end]

    def forward_trunk(self, tokens_BS: torch.Tensor, start_pos: int = 0, kv_cache=None) -> torch.Tensor:
        """Hidden state after the shared trunk, `[B, S, D]` (not normalised)."""
        cos, sin = self._rope(start_pos, tokens_BS.shape[1])
        h = self.tok_embeddings(tokens_BS)
        for i, layer in enumerate(self.layers[:-1]):
            h = layer(h, cos, sin, None if kv_cache is None else kv_cache[i])
        return h

    def forward_head(
        self, h_trunk_BSD: torch.Tensor, head_index: int, start_pos: int = 0, kv_cache=None
    ) -> torch.Tensor:
        """Logits `[B, S, V]` (float32) of head `head_index` (0 = next token) from the trunk output."""
        return self.output_logits(self.head_hidden(h_trunk_BSD, head_index, start_pos, kv_cache))

    def head_hidden(
        self, h_trunk_BSD: torch.Tensor, head_index: int, start_pos: int = 0, kv_cache=None
    ) -> torch.Tensor:
        """Output `[B, S, D]` of head block `head_index`, before the shared `norm` and `output`."""
        cos, sin = self._rope(start_pos, h_trunk_BSD.shape[1])
        cache = None if kv_cache is None else kv_cache[self.args.n_trunk_layers + head_index]
        return self.heads[head_index](h_trunk_BSD, cos, sin, cache)

    def output_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Shared `norm` + `output` projection of head outputs `[..., D]` → logits `[..., V]` (float32)."""
        return self.output(self.norm(z)).float()

    def forward(self, tokens_BS: torch.Tensor, n_heads: Optional[int] = None) -> torch.Tensor:
        """Logits `[B, S, H, V]` of the first `n_heads` heads (all by default)."""
        n_heads = self.n_future_tokens if n_heads is None else n_heads
        if not 1 <= n_heads <= self.n_future_tokens:
            raise ValueError(f"n_heads={n_heads} must be in 1..{self.n_future_tokens}")
        h_trunk = self.forward_trunk(tokens_BS)
        # Stack the heads' [B, S, D] outputs, then one norm + output projection writes the
        # [B, S, H, V] logits in place: no copy of H logit tensors and none in the backward.
        z_BSHD = torch.stack([self.head_hidden(h_trunk, k) for k in range(n_heads)], dim=2)
        return self.output_logits(z_BSHD)

    def new_kv_cache(self) -> list[KVCacheLayer]:
        """One empty cache per block: trunk blocks, then every head."""
        return [KVCacheLayer() for _ in range(self.args.n_trunk_layers + self.n_future_tokens)]

    @torch.no_grad()
    def init_weights(self, seed: int = 0) -> None:
        """Random init (normal, std 0.02; output projections scaled by depth as in GPT-2/LLaMA recipes)."""
        gen = torch.Generator().manual_seed(seed)
        depth_std = 0.02 / math.sqrt(2 * self.args.n_layers)
        for name, param in self.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                std = depth_std if name.endswith(("wo.weight", "w2.weight")) else 0.02
                param.copy_(torch.randn(param.shape, generator=gen) * std)


class ValueHead(nn.Module):
    """Unbounded scalar value `V_t` of prefix `x_0..x_t`: `Linear(dim, 1)` on `norm(h_trunk)`."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, 1)

    def forward(self, h_trunk_normed_BSD: torch.Tensor) -> torch.Tensor:
        """Values `[B, S]` (float32) from the normalised trunk output."""
        return self.proj(h_trunk_normed_BSD).squeeze(-1).float()
