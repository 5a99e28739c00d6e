"""Incremental (KV-cache) forward of the MTP `Transformer` for a batch whose rows sit at different positions.

The model's own blocks do the work: `forward_trunk` / `head_hidden` with a `KVCache`
(`wmtp.model.transformer`) run the same attention, RoPE and projections as training, attending to
the cached keys and values. The cache has one slot per position: row b's token at position p lives
in slot p of row b, and every step places each row's tokens at its own positions — so prompts of
different lengths (right-padded), rows that finish early and leave the batch, and self-speculative
decoding where each row accepts a different number of drafts all run in one batch; rejected drafts
are simply overwritten later.

Every head block runs at every position (its cache needs the keys and values), but the vocabulary
projection — the largest matmul of a small model — is left until the logits are indexed: decoding
uses head 1's logits at every position and the other heads' at one position per row only.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from wmtp.model.transformer import GEMM_MIN_ROWS, OutputProjection, Transformer

FULL_MAX_ROWS = 16  # `HeadLogits.full_pays`: up to this many vectors, one projection of all is the cheaper


class HeadLogits:
    """The logits `[B, S, H, V]` (float32) of a step, projected to the vocabulary only where indexed.

    An index over the batch / position / head dims (`logits[:, :, 0]`, `logits[rows, positions]`,
    `logits[rows, accepted, 1:]`) selects the heads' final hidden states first, then applies the final
    norm and the output projection to those alone: per vector, the same arithmetic as projecting all.
    An index that reaches the vocabulary dim (or `...`), and `full()`, project everything.
    """

    def __init__(self, model: Transformer, hidden_BSHD: torch.Tensor, output: Optional[OutputProjection] = None):
        self.model = model
        self.hidden = hidden_BSHD
        self.output = output  # the cache's `output_logits` (same bits, fewer calls), else the model's

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

    def full_pays(self, rows: int) -> bool:
        """Whether `full()` is the cheaper way to get logits for `rows` of the vectors, with their own bits.

        The output is multiplied as a GEMM from `GEMM_MIN_ROWS` rows on (CPU, float32), where a row's
        result does not depend on how many rows there are: projecting everything at once then changes
        nothing for those rows, and while the step is small (`FULL_MAX_ROWS` vectors: batch 1 of a
        4-head speculative step) it reads the output matrix — the largest of a small model — once
        instead of once per index. With more rows the extra multiplies cost more than the read.
        """
        output, total = self.output, self.hidden.shape[:-1].numel()
        return (
            output is not None
            and output.output.weight_t is not None
            and GEMM_MIN_ROWS <= rows
            and GEMM_MIN_ROWS <= total <= FULL_MAX_ROWS
        )

    @torch.inference_mode()
    def _project(self, hidden: torch.Tensor) -> torch.Tensor:
        return (self.output or self.model.output_logits)(hidden)


def _dims_indexed(key) -> int:
    if key is None or isinstance(key, bool):
        return 0
    if isinstance(key, torch.Tensor) and key.dtype == torch.bool:
        return key.dim()
    return 1


class CachedMTP:
    """`step(tokens, starts, n_heads)` → `HeadLogits` `[B, S, n_heads, V]`, caching keys/values.

    Row b's tokens `tokens[b]` sit at positions `starts[b], starts[b] + 1, …` (host integers: the
    caller knows where its rows are, so a step needs no device→host sync to place them).
    """

    def __init__(self, model: Transformer, batch: int, max_len: int, n_heads: int = 1):
        self.model = model
        self.n_heads = n_heads
        self.cache = model.new_kv_cache(batch, max_len, n_heads)

    def keep_rows(self, rows: Sequence[int]) -> None:
        """Drop finished rows: keep `rows` (indices into the current batch), in that order."""
        self.cache.keep_rows(list(rows))

    @torch.inference_mode()
    def step(self, tokens_BS: torch.Tensor, starts: Sequence[int], n_heads: int = 1) -> HeadLogits:
        """Run tokens through the trunk and the first `n_heads` heads at the given per-row positions.

        Returns their logits, projected to the vocabulary where they are indexed (see `HeadLogits`).
        """
        if n_heads > self.n_heads:
            raise ValueError(f"cache was built for {self.n_heads} heads, asked for {n_heads}")
        model, cache = self.model, self.cache.seek([int(s) for s in starts], tokens_BS.shape[1])
        h = model.forward_trunk(tokens_BS, cache)
        if n_heads == 1:
            return HeadLogits(model, model.head_hidden(h, 0, cache)[:, :, None], cache.output)
        hidden = torch.stack([model.head_hidden(h, k, cache) for k in range(n_heads)], dim=2)
        return HeadLogits(model, hidden, cache.output)
