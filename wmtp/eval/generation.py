"""Text generation with the MTP model: batched KV-cache decoding and self-speculative decoding.

    completions, stats = generate(model, tokenizer, prompts, GenerationConfig(max_new_tokens=256,
                                  stop=HUMANEVAL_STOP, temperature=0.0, speculative=True))

- Standard decoding uses head 1 only: greedy (`temperature=0`) or sampling with temperature and
  nucleus (`top_p`), seeded by `seed`.
- Self-speculative decoding (greedy only) uses every head: at each step head 1 verifies the tokens
  the extra heads drafted in the previous step; the longest verified run of drafts is kept plus head
  1's own next token, and the extra heads draft again from the last verified position. The result is
  exactly greedy decoding's output (only the number of forward passes changes); `stats` reports how
  many drafts were accepted.
- A completion stops at end-of-sequence, at the first stop sequence (cut off there, not included), or
  after `max_new_tokens` tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from wmtp.eval.decoding import CachedMTP
from wmtp.eval.errors import EvalError


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0  # nucleus sampling mass (1 = off)
    stop: tuple[str, ...] = ()  # cut the completion at the first of these
    seed: int = 0
    batch_size: int = 8  # rows decoded together
    speculative: bool = False  # self-speculative decoding with the extra heads (greedy only)

    def validate(self, model) -> "GenerationConfig":
        if self.max_new_tokens < 1:
            raise EvalError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise EvalError(f"--temperature must be ≥ 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise EvalError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.batch_size < 1:
            raise EvalError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.speculative and self.temperature > 0:
            raise EvalError("--speculative decodes greedily: use it with --temperature 0")
        if self.speculative and model.n_future_tokens < 2:
            raise EvalError("--speculative needs a model with extra heads (n_future_tokens ≥ 2), this one has 1")
        reserve = model.n_future_tokens if self.speculative else 1
        if self.max_new_tokens + reserve >= model.args.max_seq_len:
            raise EvalError(
                f"--max-new-tokens {self.max_new_tokens} leaves no room for a prompt in max_seq_len={model.args.max_seq_len}"
            )
        return self


@dataclass
class Completion:
    text: str
    n_tokens: int  # tokens generated (up to and including the one that completed a stop sequence)
    finish_reason: str  # "stop" | "eos" | "length"
    prompt_truncated: bool = False


@dataclass
class GenerationStats:
    n_tokens: int = 0
    seconds: float = 0.0
    forward_passes: int = 0  # decoding forwards of the batch (prefill excluded)
    drafted: int = 0  # speculative: draft tokens proposed for live rows
    accepted: int = 0  # speculative: draft tokens head 1 confirmed

    @property
    def tokens_per_second(self) -> float:
        return self.n_tokens / self.seconds if self.seconds else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    def to_dict(self) -> dict:
        return {
            "n_tokens": self.n_tokens,
            "seconds": self.seconds,
            "tokens_per_second": self.tokens_per_second,
            "forward_passes": self.forward_passes,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "acceptance_rate": self.acceptance_rate,
        }


@dataclass
class _Row:
    """One sequence being generated."""

    index: int  # position in the caller's prompt list
    prompt_ids: list[int]
    truncated: bool
    prompt_text: str = ""  # the prompt as the tokenizer decodes it (to cut the completion off the full text)
    generated: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: Optional[str] = None


def model_device(model) -> torch.device:
    return model.tok_embeddings.weight.device


def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    config: GenerationConfig = GenerationConfig(),
    on_completion: Optional[Callable[[int], None]] = None,
) -> tuple[list[Completion], GenerationStats]:
    """Complete every prompt; results in prompt order. `on_completion(count)` after each batch."""
    config.validate(model)
    model.eval()
    reserve = model.n_future_tokens if config.speculative else 1
    keep = model.args.max_seq_len - config.max_new_tokens - reserve
    rows = []
    for index, prompt in enumerate(prompts):
        ids = tokenizer.encode(prompt, bos=True, eos=False)
        rows.append(_Row(index, ids[-keep:], len(ids) > keep, tokenizer.decode(ids[-keep:])))
    # Longest first, so a batch holds similar lengths (less padding) and memory peaks at once.
    order = sorted(rows, key=lambda r: -len(r.prompt_ids))
    generator = torch.Generator(device=model_device(model)).manual_seed(config.seed)
    stats = GenerationStats()
    started = time.perf_counter()
    decode = _decode_speculative if config.speculative else _decode_standard
    for start in range(0, len(order), config.batch_size):
        batch = order[start : start + config.batch_size]
        decode(model, tokenizer, batch, config, generator, stats)
        if on_completion is not None:
            on_completion(len(batch))
    stats.seconds = time.perf_counter() - started
    stats.n_tokens = sum(len(r.generated) for r in rows)
    return [Completion(r.text, len(r.generated), r.finish_reason or "length", r.truncated) for r in rows], stats


# ---------------------------------------------------------------- shared pieces


def _prefill(model, batch: list[_Row], config: GenerationConfig, n_heads: int):
    """Run the right-padded prompts; returns (cache, logits at each row's last prompt token `[B, H, V]`)."""
    device = model_device(model)
    lengths = torch.tensor([len(r.prompt_ids) for r in batch], device=device)
    width = int(lengths.max())
    tokens = torch.zeros(len(batch), width, dtype=torch.long, device=device)
    for i, row in enumerate(batch):
        tokens[i, : len(row.prompt_ids)] = torch.tensor(row.prompt_ids, device=device)
    reserve = n_heads if n_heads > 1 else 1
    cached = CachedMTP(model, len(batch), width + config.max_new_tokens + reserve, n_heads)
    positions = torch.arange(width, device=device).expand(len(batch), width)
    logits = cached.step(tokens, positions, n_heads)
    return cached, logits[torch.arange(len(batch), device=device), lengths - 1], lengths


def _append(row: _Row, token: int, tokenizer, config: GenerationConfig) -> bool:
    """Add one token to a row; returns True when the row is finished."""
    if token == tokenizer.eos_id:
        row.finish_reason = "eos"
        return True
    row.generated.append(token)
    row.text = completion_text(tokenizer, row.prompt_ids, row.prompt_text, row.generated)
    cut = min((i for i in (row.text.find(s) for s in config.stop) if i >= 0), default=-1)
    if cut >= 0:
        row.text, row.finish_reason = row.text[:cut], "stop"
        return True
    if len(row.generated) >= config.max_new_tokens:
        row.finish_reason = "length"
        return True
    return False


def completion_text(tokenizer, prompt_ids: list[int], prompt_text: str, generated: list[int]) -> str:
    """The generated text as it continues the prompt.

    Decoded together with the prompt and then cut: SentencePiece drops the leading space of a
    sequence's first piece, so decoding the new tokens alone would lose indentation.
    """
    full = tokenizer.decode(prompt_ids + generated)
    return full[len(prompt_text) :] if full.startswith(prompt_text) else tokenizer.decode(generated)


def sample_next(logits_BV: torch.Tensor, config: GenerationConfig, generator: torch.Generator) -> torch.Tensor:
    """Next token per row: argmax at temperature 0, else a draw from the temperature/top-p distribution."""
    if config.temperature == 0:
        return logits_BV.argmax(-1)
    probs = torch.softmax(logits_BV.float() / config.temperature, dim=-1)
    if config.top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the token that crosses it included).
        outside = sorted_probs.cumsum(-1) - sorted_probs >= config.top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# ---------------------------------------------------------------- standard decoding


def _decode_standard(model, tokenizer, batch, config, generator, stats) -> None:
    cached, last_logits, positions = _prefill(model, batch, config, n_heads=1)
    next_logits = last_logits[:, 0]
    live = list(batch)
    while True:
        tokens = sample_next(next_logits, config, generator)
        still = [i for i, (row, tok) in enumerate(zip(live, tokens.tolist())) if not _append(row, tok, tokenizer, config)]
        if not still:
            return
        if len(still) < len(live):
            keep = torch.tensor(still, device=tokens.device)
            cached.keep_rows(keep)
            tokens, positions = tokens[keep], positions[keep]
            live = [live[i] for i in still]
        next_logits = cached.step(tokens[:, None], positions[:, None], n_heads=1)[:, 0, 0]
        positions = positions + 1
        stats.forward_passes += 1


# ---------------------------------------------------------------- self-speculative decoding


def _decode_speculative(model, tokenizer, batch, config, generator, stats) -> None:
    """Draft with heads 2..H, verify with head 1; commits exactly the greedy tokens."""
    n_heads = model.n_future_tokens
    cached, last_logits, lengths = _prefill(model, batch, config, n_heads)
    # pending[:, 0] is a committed token not yet run through the model; pending[:, 1:] are drafts.
    pending = last_logits.argmax(-1)  # [B, H]: head 1's next token, then the extra heads' drafts
    start = lengths  # position of pending[:, 0]
    live = list(batch)
    finished = [_append(row, tok, tokenizer, config) for row, tok in zip(live, pending[:, 0].tolist())]
    device = pending.device
    offsets = torch.arange(n_heads, device=device)
    while True:
        still = [i for i, done in enumerate(finished) if not done]
        if not still:
            return
        if len(still) < len(live):
            keep = torch.tensor(still, device=device)
            cached.keep_rows(keep)
            pending, start = pending[keep], start[keep]
            live = [live[i] for i in still]
        logits = cached.step(pending, start[:, None] + offsets, n_heads)  # [B, H(positions), H(heads), V]
        stats.forward_passes += 1
        greedy = logits[:, :, 0].argmax(-1)  # head 1 at each pending position: the true next tokens
        drafts_ok = (pending[:, 1:] == greedy[:, :-1]).long().cumprod(-1)  # verified prefix of the drafts
        accepted = drafts_ok.sum(-1)  # [B]
        stats.drafted += (n_heads - 1) * len(live)
        stats.accepted += int(accepted.sum())
        rows = torch.arange(len(live), device=device)
        bonus = greedy[rows, accepted]  # head 1's token after the last accepted draft
        new_drafts = logits[rows, accepted, 1:].argmax(-1)  # extra heads at the last verified position
        finished = []
        for i, row in enumerate(live):
            committed = pending[i, 1 : 1 + int(accepted[i])].tolist() + [int(bonus[i])]
            finished.append(any(_append(row, tok, tokenizer, config) for tok in committed))
        pending = torch.cat([bonus[:, None], new_drafts], dim=1)
        start = start + accepted + 1
