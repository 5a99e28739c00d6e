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
import weakref
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

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

    The pair (a, b) becomes (a·cos − b·sin, b·cos + a·sin), which is (a + ib)(cos + i·sin) written in
    real arithmetic: `x·cos + swap(x)·(−sin, +sin)`. These are the complex product's own multiplies and
    adds, so the result is bit-identical to `view_as_complex(x) * complex(cos, sin)` (tested), and it
    is one path for every device: MPS lacks complex kernels and inductor generates no code for complex
    operators (a compiled block would fall back to eager around them). Computed in float32 as Meta does.
    """
    return _apply_rope_real(x_BSND, cos_SD, sin_SD)


def _apply_rope_real(x_BSND: torch.Tensor, cos_SD: torch.Tensor, sin_SD: torch.Tensor) -> torch.Tensor:
    """`apply_rope`'s arithmetic: pairs on a trailing axis of 2, (a, b)·cos + (b, a)·(−sin, sin)."""
    pairs = x_BSND.float().unflatten(-1, (-1, 2))  # [B, S, N, D/2, 2]
    cos = cos_SD.float()[None, :, None, :, None]
    signed_sin = torch.stack((-sin_SD.float(), sin_SD.float()), dim=-1)[None, :, None, :, :]
    return (pairs * cos + pairs.flip(-1) * signed_sin).flatten(-2).type_as(x_BSND)


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
        """Causal self-attention over `x_BSD`; with `kv_cache`, over the cached keys/values as well
        (decoding: `cos`/`sin` are then the angles of the positions the cache's `seek` set)."""
        if kv_cache is not None:  # decoding
            return self._cached(x_BSD, cos, sin, kv_cache)
        bsz, seqlen, _ = x_BSD.shape
        q = self.wq(x_BSD).view(bsz, seqlen, self.n_heads, self.head_dim)
        k = self.wk(x_BSD).view(bsz, seqlen, self.n_kv_heads, self.head_dim)
        v = self.wv(x_BSD).view(bsz, seqlen, self.n_kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, heads, S, head_dim]
        # SDPA's GQA mode reads the shared kv heads in place instead of materialising copies.
        gqa = self.n_kv_heads != self.n_heads  # each kv head serves n_heads/n_kv_heads queries
        out = F.scaled_dot_product_attention(q, k, v, is_causal=seqlen > 1, enable_gqa=gqa)
        return self.wo(out.transpose(1, 2).reshape(bsz, seqlen, -1))

    def _cached(self, x_BSD, cos, sin, layer: "KVCacheLayer") -> torch.Tensor:
        """Attention `[B, S, D]` of the step's tokens over the cache (decoding; `DecodingProjections`).

        The step's keys/values are written into the cache at their positions first. Each kv head
        serves `n_heads / n_kv_heads` query heads: the queries of one group are laid out as one longer
        query sequence of that kv head (`[B, n_kv_heads, group·S, head_dim]`), so attention reads the
        cache in place — no repeated kv heads, whatever the mask.
        """
        step = layer.cache  # where this forward's tokens sit (`KVCache.seek`)
        bsz, seqlen, _ = x_BSD.shape
        # q and k side by side, so that RoPE rotates both in one call; rows at different positions are
        # one flattened sequence (`apply_rope` broadcasts its [S, D/2] tables over the batch dim).
        qk, v_BSND = layer.projections.qkv(x_BSD)
        if step.per_row_rope:
            qk = apply_rope(qk.view(1, bsz * seqlen, -1, self.head_dim), cos, sin).view(bsz, seqlen, -1, self.head_dim)
        else:
            qk = apply_rope(qk, cos, sin)
        q, k = qk.split((self.n_heads, self.n_kv_heads), dim=2)
        layer.write(k, v_BSND)
        if step.from_start:  # a prompt pass from position 0: its own keys are all there is
            gqa = self.n_kv_heads != self.n_heads
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v_BSND.transpose(1, 2), is_causal=seqlen > 1, enable_gqa=gqa
            ).transpose(1, 2)
        else:
            group = self.n_heads // self.n_kv_heads
            q_grouped = q.transpose(1, 2).reshape(bsz, self.n_kv_heads, group * seqlen, self.head_dim)
            keys, values = layer.visible()
            out = F.scaled_dot_product_attention(q_grouped, keys, values, attn_mask=step.mask)
            out = out.view(bsz, self.n_heads, seqlen, self.head_dim).transpose(1, 2)
        return layer.projections.wo(out.reshape(bsz, seqlen, -1))


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
        if kv_cache is not None:  # decoding: the same arithmetic through the cache's `DecodingProjections`
            block = kv_cache.projections
            h = x + self.attention(block.attention_norm(x), cos, sin, kv_cache)
            return h + block.feed_forward(block.ffn_norm(h))
        h = x + self.attention(self.attention_norm(x), cos, sin)
        return h + self.feed_forward(self.ffn_norm(h))


# ---------------------------------------------------------------- decoding (KV cache)

GEMM_MIN_ROWS = 4
"""From this many rows on, `x @ Wᵀ` with `Wᵀ` a contiguous copy of the weight is faster than `F.linear`'s
transposed view (about a third less time at 4–32 rows here: no transposed operand to pack), and MKL's
float32 GEMM on this project's machines gives it the same bits; with fewer rows `F.linear` takes a
matrix-vector path that sums in another order, so those keep `F.linear`. Another BLAS or CPU may round
differently: `tests/unit/test_transformer.py::test_decoding_projections_agree_with_f_linear` checks the
results agree to float32 rounding."""


class Projection:
    """`F.linear(x, weight)` for decoding (the same dot products); on the CPU in float32, from
    `GEMM_MIN_ROWS` rows on, as `x @ weight_t` with `weight_t` a contiguous copy of `weight.T` (faster;
    the same bits under MKL here)."""

    __slots__ = ("weight", "weight_t")

    def __init__(self, weight: torch.Tensor, transposed: bool = False):
        self.weight = weight
        self.weight_t = weight.t().contiguous() if transposed else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        if self.weight_t is not None and x2.shape[0] >= GEMM_MIN_ROWS:
            out = torch.mm(x2, self.weight_t)
        else:
            out = F.linear(x2, self.weight)
        return out.view(*x.shape[:-1], out.shape[-1])


class DecodingProjections:
    """A block's projections as decoding runs them: the same arithmetic as its modules, in fewer calls.

    `fast` (the CPU in float32, where the bits are checked): wq/wk/wv are one matrix (their rows
    stacked) and so are w1/w3, so a block runs 4 matmuls instead of 7 — each output element is the same
    dot product, so the same bits (a row of a matmul's output does not depend on the weight's other
    rows); every projection keeps a transposed copy for steps of `GEMM_MIN_ROWS`+ rows (`Projection`);
    the norms run as `F.rms_norm`. That holds about twice the block's weights again while a model
    decodes. Otherwise (CUDA, MPS, other dtypes) the module weights are used as they are: no copies,
    and no bets on which kernel a fused shape would get.
    """

    def __init__(self, block: "TransformerBlock", fast: bool):
        attention, ffn = block.attention, block.feed_forward
        self.head_dim, self.n_heads, self.n_kv_heads = attention.head_dim, attention.n_heads, attention.n_kv_heads
        transposed = fast
        self.attention_norm = decoding_norm(block.attention_norm, fast)
        self.ffn_norm = decoding_norm(block.ffn_norm, fast)
        if fast:
            qkv = torch.cat([attention.wq.weight, attention.wk.weight, attention.wv.weight])
            self.wqkv: Optional[Projection] = Projection(qkv, transposed)
        else:
            self.wqkv = None
            self.wq, self.wk, self.wv = (Projection(m.weight) for m in (attention.wq, attention.wk, attention.wv))
        self.wo = Projection(attention.wo.weight, transposed)
        self.hidden = ffn.w1.out_features
        # SiLU on w1's half of the fused output is a strided view: the same vectorised chunks as on a
        # tensor of its own only when rows are whole chunks (2 × 16 floats with AVX-512; 64 is safe).
        if fast and self.hidden % 64 == 0:
            self.w13: Optional[Projection] = Projection(torch.cat([ffn.w1.weight, ffn.w3.weight]), transposed)
        else:
            self.w13 = None
            self.w1, self.w3 = Projection(ffn.w1.weight, transposed), Projection(ffn.w3.weight, transposed)
        self.w2 = Projection(ffn.w2.weight, transposed)

    def qkv(self, x_BSD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(q and k side by side `[B, S, n_heads + n_kv_heads, head_dim]`, v `[B, S, n_kv_heads, head_dim]`)."""
        bsz, seqlen, _ = x_BSD.shape
        heads = self.n_heads + self.n_kv_heads
        if self.wqkv is not None:
            qkv = self.wqkv(x_BSD)
            return (
                qkv[..., : heads * self.head_dim].view(bsz, seqlen, heads, self.head_dim),
                qkv[..., heads * self.head_dim :].view(bsz, seqlen, self.n_kv_heads, self.head_dim),
            )
        q = self.wq(x_BSD).view(bsz, seqlen, self.n_heads, self.head_dim)
        k = self.wk(x_BSD).view(bsz, seqlen, self.n_kv_heads, self.head_dim)
        return torch.cat((q, k), dim=2), self.wv(x_BSD).view(bsz, seqlen, self.n_kv_heads, self.head_dim)

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """`FeedForward`'s SwiGLU, w2(silu(w1 x) * w3 x)."""
        if self.w13 is not None:
            gate_up = self.w13(x)
            return self.w2(F.silu(gate_up[..., : self.hidden]) * gate_up[..., self.hidden :])
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def decoding_norm(norm: RMSNorm, fused: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """`norm` itself, or (`fused`: CPU, float32) `F.rms_norm` with its weight and eps: the same operations in the
    same order (float32 mean of squares, + eps, rsqrt, ×, × weight) in one C++ call — the same bits,
    without a Python module call and seven Python-dispatched ops per norm."""
    if not fused:
        return norm
    shape, weight, eps = (norm.weight.shape[0],), norm.weight, norm.eps
    return lambda x: F.rms_norm(x, shape, weight, eps)


# The projections of a model's blocks while its weights stay the same (the key: each parameter's
# storage and version counter, which in-place updates — optimizer steps, load_state_dict — bump).
_DECODING: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


@torch.no_grad()
def decoding_projections(
    model: "Transformer", fast: Optional[bool] = None
) -> tuple[list[DecodingProjections], "OutputProjection"]:
    """Every block's `DecodingProjections` (trunk, then heads in order) and `output_logits` for decoding.

    `fast` (default: on the CPU in float32, where its bits are checked) fuses and copies weights as
    `DecodingProjections` says; False runs the modules' own weights, call for call as the training
    forward does (what tests compare with).
    """
    weight = model.output.weight
    fast = (weight.device.type == "cpu" and weight.dtype == torch.float32) if fast is None else fast
    key = (fast, *((p.data_ptr(), p._version, p.dtype, p.device) for p in model.parameters()))
    cached = _DECODING.get(model)
    if cached is None or cached[0] != key:
        blocks = [*model.layers[:-1], *model.heads]
        cached = (
            key,
            [DecodingProjections(b, fast) for b in blocks],
            Projection(weight, fast),
            decoding_norm(model.norm, fast),
        )
        _DECODING[model] = cached
    return cached[1], OutputProjection(cached[3], cached[2])


class OutputProjection:
    """`Transformer.output_logits` (shared norm, output projection, float32) for decoding: the same bits."""

    __slots__ = ("norm", "output")

    def __init__(self, norm: Callable[[torch.Tensor], torch.Tensor], output: Projection):
        self.norm, self.output = norm, output

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self.output(self.norm(z)).float()


class KVCache:
    """Keys and values of every block for incremental decoding (`wmtp.eval`; never used in training).

    Allocated once — `[blocks, B, n_kv_heads, max_len, head_dim]` for keys and for values — and written
    in place: row b's token at position p lives in slot p of row b. Rows may sit at different positions
    (right-padded prompts of different lengths; in speculative decoding, a different number of accepted
    drafts per row). Before each forward, `seek(starts, seqlen)` places the next `seqlen` tokens of row b
    at positions `starts[b], starts[b] + 1, …`; a query at position p then attends to slots ≤ p of its
    own row. So the slots past a row's position — the pads of a shorter prompt, rejected drafts — are
    never read before the row's own tokens overwrite them: nothing is ever truncated or masked for good.

    `seek` takes host integers, so the step's bookkeeping (visible span, RoPE angles, mask, where to
    write) costs no device→host sync, and is computed once per forward, not once per block.
    """

    def __init__(
        self,
        n_blocks: int,
        batch: int,
        max_len: int,
        args: ModelArgs,
        rope_cos: torch.Tensor,
        rope_sin: torch.Tensor,
        device=None,
        dtype=None,
        projections: Optional[list[DecodingProjections]] = None,
        output: Optional["OutputProjection"] = None,
    ):
        if max_len > rope_cos.shape[0]:
            raise ValueError(f"cache length {max_len} exceeds max_seq_len={rope_cos.shape[0]}")
        if projections is None or len(projections) != n_blocks:
            raise ValueError("a KVCache needs one DecodingProjections per block (Transformer.new_kv_cache)")
        self.projections, self.output = projections, output
        shape = (n_blocks, batch, args.n_kv_heads, max_len, args.head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.group = args.n_heads // args.n_kv_heads
        self.rope_cos, self.rope_sin = rope_cos, rope_sin
        self._slots = torch.arange(max_len, device=device)
        self.rows = torch.arange(batch, device=device)[:, None]  # [B, 1], to index rows with positions
        # An attention mask is additive (0 where visible, −inf elsewhere), made once per step: SDPA
        # would turn a boolean one into exactly this in every block.
        self._visible = torch.zeros((), device=device, dtype=dtype)
        self._hidden = torch.full((), float("-inf"), device=device, dtype=dtype)
        self.layers = [KVCacheLayer(self, i) for i in range(n_blocks)]
        # The step `seek` set:
        self.span = 0  # slots [0, span) hold every key a query of this step may see
        self.from_start = False  # every row starts at 0: causal attention over the step's own keys
        self.per_row_rope = False  # cos/sin are [B·S, D/2] (rows at different positions), else [S, D/2]
        self.cos: Optional[torch.Tensor] = None
        self.sin: Optional[torch.Tensor] = None
        self.mask: Optional[torch.Tensor] = None  # [(B, 1,) group·S, span] additive, None: every slot < span
        self.write_at: Optional[slice | torch.Tensor] = None  # slots of a uniform step, else positions [B, S]

    @property
    def batch(self) -> int:
        return self.keys.shape[1]

    def seek(self, starts: list[int], seqlen: int) -> "KVCache":
        """Place the next forward's `seqlen` tokens of row b at positions `starts[b] ..` (host ints)."""
        if len(starts) != self.batch:
            raise ValueError(f"seek: {len(starts)} starts for a batch of {self.batch}")
        first, last = min(starts), max(starts)
        self.span = last + seqlen
        if first < 0 or self.span > self.max_len:
            raise ValueError(f"positions {first}..{self.span - 1} outside the cache's {self.max_len} slots")
        uniform = first == last
        self.from_start = uniform and first == 0
        self.per_row_rope = not uniform
        if uniform:  # one position range for every row: slices, no gathers
            self.cos, self.sin = self.rope_cos[first : self.span], self.rope_sin[first : self.span]
            self.write_at = slice(first, self.span)
            # Query i (position first + i) sees slots ≤ first + i; a single query sees all `span` slots.
            if seqlen == 1 or self.from_start:  # (from the start: SDPA's own causal mask)
                self.mask = None
            else:
                causal = self._slots[None, : self.span] <= self._slots[first : self.span, None]  # [S, span]
                self.mask = self._additive(causal.repeat(self.group, 1))  # [group·S, span]
        else:
            device = self.keys.device
            offsets = self._slots[:seqlen]
            positions = torch.tensor(starts, device=device)[:, None] + offsets  # [B, S]
            self.cos = self.rope_cos[positions].flatten(0, 1)
            self.sin = self.rope_sin[positions].flatten(0, 1)
            self.write_at = positions
            visible = self._slots[None, None, : self.span] <= positions[:, :, None]  # [B, S, span]
            self.mask = self._additive(visible.repeat(1, self.group, 1)[:, None])  # [B, 1, group·S, span]
        return self

    def _additive(self, visible: torch.Tensor) -> torch.Tensor:
        return torch.where(visible, self._visible, self._hidden)

    def keep_rows(self, rows: list[int]) -> None:
        """Drop finished rows: keep `rows` (indices into the current batch), in that order."""
        index = torch.tensor(rows, device=self.keys.device)
        self.keys = self.keys.index_select(1, index)
        self.values = self.values.index_select(1, index)
        self.rows = self.rows[: len(rows)]
        self.layers = [KVCacheLayer(self, i) for i in range(len(self.layers))]


class KVCacheLayer:
    """One block's view of a `KVCache`: its key/value buffers, its projections and the step's placement."""

    def __init__(self, cache: KVCache, index: int):
        self.cache = cache
        self.keys, self.values = cache.keys[index], cache.values[index]  # [B, n_kv_heads, max_len, head_dim]
        self.projections = cache.projections[index]

    def write(self, k_BSND: torch.Tensor, v_BSND: torch.Tensor) -> None:
        """Store the step's keys/values `[B, S, n_kv_heads, head_dim]` at their slots, in place."""
        at = self.cache.write_at
        if isinstance(at, slice):
            self.keys[:, :, at] = k_BSND.transpose(1, 2)
            self.values[:, :, at] = v_BSND.transpose(1, 2)
        else:  # row b's token s goes to slot at[b, s]
            self.keys[self.cache.rows, :, at] = k_BSND
            self.values[self.cache.rows, :, at] = v_BSND

    def visible(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values `[B, n_kv_heads, span, head_dim]` of the slots this step can see."""
        span = self.cache.span
        return self.keys[:, :, :span], self.values[:, :, :span]


class Transformer(nn.Module):
    """Multi-token-prediction LLaMA. `model(tokens)` → logits `[B, S, n_heads_used, V]` (float32)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.n_future_tokens = args.n_future_tokens
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layers - args.n_future_tokens + 1))
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

    def _angles(self, seqlen: int, kv_cache: Optional[KVCache]) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE cos/sin: positions 0..seqlen-1, or with a cache the positions its `seek` set."""
        return self._rope(0, seqlen) if kv_cache is None else (kv_cache.cos, kv_cache.sin)

    def forward_trunk(self, tokens_BS: torch.Tensor, kv_cache: Optional[KVCache] = None) -> torch.Tensor:
        """Hidden state after the shared trunk, `[B, S, D]` (not normalised).

        With `kv_cache` (decoding): the tokens sit where `kv_cache.seek` placed them, attend to the cached
        keys/values, and their own are cached.
        """
        cos, sin = self._angles(tokens_BS.shape[1], kv_cache)
        h = self.tok_embeddings(tokens_BS)
        for i, layer in enumerate(self.layers[:-1]):
            h = layer(h, cos, sin, None if kv_cache is None else kv_cache.layers[i])
        return h

    def forward_head(
        self, h_trunk_BSD: torch.Tensor, head_index: int, kv_cache: Optional[KVCache] = None
    ) -> torch.Tensor:
        """Logits `[B, S, V]` (float32) of head `head_index` (0 = next token) from the trunk output."""
        return self.output_logits(self.head_hidden(h_trunk_BSD, head_index, kv_cache))

    def head_hidden(
        self, h_trunk_BSD: torch.Tensor, head_index: int, kv_cache: Optional[KVCache] = None
    ) -> torch.Tensor:
        """Output `[B, S, D]` of head block `head_index`, before the shared `norm` and `output`."""
        cos, sin = self._angles(h_trunk_BSD.shape[1], kv_cache)
        cache = None
        if kv_cache is not None:
            index = self.args.n_trunk_layers + head_index
            if index >= len(kv_cache.layers):
                raise ValueError(
                    f"the cache holds {len(kv_cache.layers) - self.args.n_trunk_layers} heads, "
                    f"head {head_index + 1} asked for"
                )
            cache = kv_cache.layers[index]
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

    def new_kv_cache(self, batch: int, max_len: int, n_heads: Optional[int] = None) -> KVCache:
        """An empty cache for `batch` rows of up to `max_len` positions: the trunk blocks, then the
        first `n_heads` heads (all by default), in the weights' device and dtype."""
        n_heads = self.n_future_tokens if n_heads is None else n_heads
        weight = self.tok_embeddings.weight
        n_blocks = self.args.n_trunk_layers + n_heads
        projections, output = decoding_projections(self)
        return KVCache(
            n_blocks,
            batch,
            max_len,
            self.args,
            self.rope_cos,
            self.rope_sin,
            device=weight.device,
            dtype=weight.dtype,
            projections=projections[:n_blocks],
            output=output,
        )

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
