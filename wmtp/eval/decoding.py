"""Incremental (KV-cache) forward of the MTP `Transformer` for a batch whose rows sit at different positions.

The model's own `forward_trunk` / `forward_head` cache assumes every row of a batch is at the same
position and has no padding mask. Batched generation needs more: prompts of different lengths, rows
that finish early and leave the batch, and self-speculative decoding where each row accepts a
different number of drafted tokens. So this module runs the model's blocks with its own cache:

- one cache slot per *position*: row b's token at position p lives in slot p of row b;
- every forward call takes per-row positions `[B, S]`, RoPE is looked up per row, and a query at
  position p attends to slots ≤ p of its own row.

Right-padding a batch of prompts therefore needs no mask of its own: the pad positions of a short row
are written into slots that no query of that row reads before the row's real tokens overwrite
them. Rejected speculative drafts are dropped the same way — nothing is truncated.

The blocks' submodules are used as they are (norms, feed-forward, the q/k/v/o projections named as in
Meta's checkpoint); only attention is recomputed here, with the same arithmetic as
`wmtp.model.transformer.Attention` (tests compare the logits with the model's own forward).

Every head block runs at every position (its cache needs the keys and values), but the vocabulary
projection — the largest matmul of a small model — is left until the logits are indexed: decoding
uses head 1's logits at every position and the other heads' at one position per row only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wmtp.device import has_complex_kernels
from wmtp.model.transformer import Transformer


class BatchKVCache:
    """Keys and values `[B, T, n_kv_heads, head_dim]` per block, slot = position."""

    def __init__(self, n_blocks: int, batch: int, max_len: int, n_kv_heads: int, head_dim: int, device, dtype):
        shape = (batch, max_len, n_kv_heads, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_blocks)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_blocks)]
        self.max_len = max_len

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Drop finished rows: keep `rows` (indices into the current batch), in that order."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]


class HeadLogits:
    """The logits `[B, S, H, V]` (float32) of a step, projected to the vocabulary only where indexed.

    An index over the batch / position / head dims (`logits[:, :, 0]`, `logits[rows, positions]`,
    `logits[rows, accepted, 1:]`) selects the heads' final hidden states first, then applies the final
    norm and the output projection to those alone: per vector, the same arithmetic as projecting all.
    An index that reaches the vocabulary dim (or `...`), and `full()`, project everything.
    """

    def __init__(self, model: Transformer, hidden_BSHD: torch.Tensor):
        self.model = model
        self.hidden = hidden_BSHD

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.hidden.shape[:-1], self.model.output.out_features))

    def __getitem__(self, index) -> torch.Tensor:
        key = index if isinstance(index, tuple) else (index,)
        if any(k is Ellipsis for k in key) or sum(_dims_indexed(k) for k in key) >= self.hidden.dim():
            return self.full()[index]
        return self._project(self.hidden[key])

    def full(self) -> torch.Tensor:
        return self._project(self.hidden)

    @torch.inference_mode()
    def _project(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.output(self.model.norm(hidden)).float()


def _dims_indexed(key) -> int:
    if key is None or isinstance(key, bool):
        return 0
    if isinstance(key, torch.Tensor) and key.dtype == torch.bool:
        return key.dim()
    return 1


class CachedMTP:
    """`step(tokens, positions, n_heads)` → `HeadLogits` `[B, S, n_heads, V]`, caching keys/values."""

    def __init__(self, model: Transformer, batch: int, max_len: int, n_heads: int = 1):
        if max_len > model.rope_cos.shape[0]:
            raise ValueError(f"cache length {max_len} exceeds max_seq_len={model.rope_cos.shape[0]}")
        self.model = model
        self.n_heads = n_heads
        self.n_trunk = len(model.layers) - 1
        attention = model.layers[0].attention
        weight = model.tok_embeddings.weight
        self.cache = BatchKVCache(
            self.n_trunk + n_heads, batch, max_len, attention.n_kv_heads, attention.head_dim, weight.device, weight.dtype
        )

    def keep_rows(self, rows: torch.Tensor) -> None:
        self.cache.keep_rows(rows)

    @torch.inference_mode()
    def step(self, tokens_BS: torch.Tensor, positions_BS: torch.Tensor, n_heads: int = 1) -> HeadLogits:
        """Run tokens at the given positions through the trunk and the first `n_heads` heads.

        Returns their logits, projected to the vocabulary where they are indexed (see `HeadLogits`).
        """
        if n_heads > self.n_heads:
            raise ValueError(f"cache was built for {self.n_heads} heads, asked for {n_heads}")
        model = self.model
        span = int(positions_BS.max()) + 1  # only the slots any query here can see
        cos, sin = model.rope_cos[positions_BS], model.rope_sin[positions_BS]  # [B, S, head_dim/2]
        slots = torch.arange(span, device=tokens_BS.device)
        visible_B1ST = (slots[None, None, :] <= positions_BS[:, :, None])[:, None]
        rows_B1 = torch.arange(tokens_BS.shape[0], device=tokens_BS.device)[:, None]
        where = (rows_B1, positions_BS, span, visible_B1ST, cos, sin)

        h = model.tok_embeddings(tokens_BS)
        for index, block in enumerate(model.layers[:-1]):
            h = self._block(block, index, h, where)
        heads = model.heads
        z_BSHD = torch.stack([self._block(heads[k], self.n_trunk + k, h, where) for k in range(n_heads)], dim=2)
        return HeadLogits(model, z_BSHD)

    def _block(self, block, cache_index: int, x_BSD: torch.Tensor, where) -> torch.Tensor:
        h = x_BSD + self._attention(block.attention, cache_index, block.attention_norm(x_BSD), where)
        return h + block.feed_forward(block.ffn_norm(h))

    def _attention(self, attention, cache_index: int, x_BSD: torch.Tensor, where) -> torch.Tensor:
        rows_B1, positions_BS, span, visible_B1ST, cos, sin = where
        bsz, seqlen, _ = x_BSD.shape
        n_heads, n_kv_heads, head_dim = attention.n_heads, attention.n_kv_heads, attention.head_dim
        q = rotate(attention.wq(x_BSD).view(bsz, seqlen, n_heads, head_dim), cos, sin)
        k = rotate(attention.wk(x_BSD).view(bsz, seqlen, n_kv_heads, head_dim), cos, sin)
        v = attention.wv(x_BSD).view(bsz, seqlen, n_kv_heads, head_dim)
        cache_k, cache_v = self.cache.keys[cache_index], self.cache.values[cache_index]
        cache_k[rows_B1, positions_BS] = k
        cache_v[rows_B1, positions_BS] = v
        keys, values = cache_k[:, :span].transpose(1, 2), cache_v[:, :span].transpose(1, 2)
        if n_kv_heads != n_heads:  # with a mask, fused kernels lack GQA support: repeat the kv heads
            keys = keys.repeat_interleave(n_heads // n_kv_heads, dim=1)
            values = values.repeat_interleave(n_heads // n_kv_heads, dim=1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=visible_B1ST)
        return attention.wo(out.transpose(1, 2).reshape(bsz, seqlen, -1))


def rotate(x_BSND: torch.Tensor, cos_BSD: torch.Tensor, sin_BSD: torch.Tensor) -> torch.Tensor:
    """RoPE with per-row angles: adjacent pairs as complex numbers times `cos + i·sin`, in float32 (Meta's convention)."""
    if not has_complex_kernels(x_BSND.device):  # MPS: the same rotation in real arithmetic
        return rotate_real(x_BSND, cos_BSD, sin_BSD)
    x_complex = torch.view_as_complex(x_BSND.float().unflatten(-1, (-1, 2)).contiguous())
    rotation = torch.complex(cos_BSD.float(), sin_BSD.float())[:, :, None, :]
    return torch.view_as_real(x_complex * rotation).flatten(-2).type_as(x_BSND)


def rotate_real(x_BSND: torch.Tensor, cos_BSD: torch.Tensor, sin_BSD: torch.Tensor) -> torch.Tensor:
    """`rotate` in real arithmetic (for devices without complex kernels)."""
    x_even, x_odd = x_BSND.float().unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos_BSD.float()[:, :, None, :], sin_BSD.float()[:, :, None, :]
    rotated = torch.stack((x_even * cos - x_odd * sin, x_even * sin + x_odd * cos), dim=-1)
    return rotated.flatten(-2).type_as(x_BSND)
