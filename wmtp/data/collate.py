"""Records → a training batch: Alpaca template, prompt masking, one label row per MTP head, padding.

For a sequence `x_0..x_{n-1}` = `[bos] + prompt + output + [eos]` (template in `wmtp.data.template`),
with the response starting at position `p`:

    labels[t, k] = x_{t+k+1}  if p ≤ t+k+1 < n   else −100      (head k+1 at position t)
    response_mask[j] = p ≤ j < n                                 (the final eos included)

so a prompt token never carries a label and neither does padding; attention still sees the prompt.

Truncation to `max_length` (L), when `n > L` (preparation already dropped records over its token budget,
so this only happens when training with a smaller L):

1. the prompt is cut from the left, keeping `bos` first and the end of the prompt (its
   `### Response:` marker), down to `min(len(prompt), L // 2)` tokens;
2. if the response still does not fit, it is cut from the right (losing its eos).
   At least `L − L // 2` response tokens always remain: the response is never dropped whole.

Batches are right-padded with `tokenizer.pad_id` to the longest sequence in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wmtp.data.schema import DataError
from wmtp.data.template import encode_prompt, encode_response
from wmtp.model.mtp_loss import IGNORE_INDEX


@dataclass
class EncodedSample:
    ids: list[int]
    prompt_length: int  # position p of the first response token


def truncate(prompt: list[int], response: list[int], max_length: int) -> EncodedSample:
    """Apply the truncation policy of the module doc to one encoded record."""
    if len(prompt) + len(response) <= max_length:
        return EncodedSample(prompt + response, len(prompt))
    prompt_keep = min(len(prompt), max(min(len(prompt), max_length // 2), max_length - len(response)))
    if prompt_keep < len(prompt):
        prompt = prompt[:1] + prompt[len(prompt) - (prompt_keep - 1) :] if prompt_keep > 1 else prompt[:1]
    response = response[: max_length - len(prompt)]
    return EncodedSample(prompt + response, len(prompt))


class MTPCollator:
    """`collator(records) -> batch` with `input_ids [B,S]`, `labels [B,S,H]`, `attention_mask [B,S]`,
    `response_mask [B,S]`, `is_correct [B]` (float, the reward R) and `task_ids` (list of str)."""

    def __init__(self, tokenizer, n_future_tokens: int, max_length: int):
        if n_future_tokens < 1:
            raise DataError(f"collator: n_future_tokens is {n_future_tokens}; expected ≥ 1")
        if max_length < 2:
            raise DataError(f"data.max_length: {max_length}; expected ≥ 2 (bos plus at least one response token)")
        self.tokenizer = tokenizer
        self.n_future_tokens = n_future_tokens
        self.max_length = max_length

    def encode(self, record: dict) -> EncodedSample:
        for key in ("instruction", "output", "task_id", "is_correct"):
            if key not in record:
                raise DataError(f"collator: record {record.get('task_id', '?')!r} has no '{key}'")
        prompt = encode_prompt(self.tokenizer, record)
        response = encode_response(self.tokenizer, record["output"])
        return truncate(prompt, response, self.max_length)

    def __call__(self, records: list[dict]) -> dict:
        samples = [self.encode(record) for record in records]
        seq_len = max(len(s.ids) for s in samples)
        batch_size = len(samples)
        input_ids = torch.full((batch_size, seq_len), self.tokenizer.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((batch_size, seq_len), dtype=torch.bool)
        response_mask = torch.zeros((batch_size, seq_len), dtype=torch.bool)
        for b, sample in enumerate(samples):
            n = len(sample.ids)
            input_ids[b, :n] = torch.tensor(sample.ids, dtype=torch.long)
            attention_mask[b, :n] = True
            response_mask[b, sample.prompt_length : n] = True
        return {
            "input_ids": input_ids,
            "labels": mtp_labels(input_ids, response_mask, self.n_future_tokens),
            "attention_mask": attention_mask,
            "response_mask": response_mask,
            "is_correct": torch.tensor([float(r["is_correct"]) for r in records], dtype=torch.float32),
            "task_ids": [str(r["task_id"]) for r in records],
        }


def mtp_labels(input_ids_BS: torch.Tensor, response_mask_BS: torch.Tensor, n_heads: int) -> torch.Tensor:
    """`labels[:, t, k] = x_{t+k+1}` where that token is a response token, else −100: shape [B, S, H]."""
    batch_size, seq_len = input_ids_BS.shape
    labels_BSH = torch.full((batch_size, seq_len, n_heads), IGNORE_INDEX, dtype=torch.long)
    for k in range(n_heads):
        shift = k + 1
        if shift >= seq_len:
            break
        target = input_ids_BS[:, shift:]
        labels_BSH[:, : seq_len - shift, k] = torch.where(response_mask_BS[:, shift:], target, IGNORE_INDEX)
    return labels_BSH
