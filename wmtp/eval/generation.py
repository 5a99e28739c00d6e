"""Text generation with the MTP model: batched KV-cache decoding and self-speculative decoding.

    completions, stats = generate(model, tokenizer, prompts, GenerationConfig(max_new_tokens=256,
                                  stop=HUMANEVAL_STOP, temperature=0.0, speculative=True))

- Standard decoding uses head 1 only: greedy (`temperature=0`) or sampling with temperature and
  nucleus (`top_p`), seeded by `seed`.
- Self-speculative decoding uses every head: at each step head 1 verifies the tokens the extra heads
  drafted in the previous step (head k + 1 drafts the token k positions after head 1's); the verified
  run of drafts is kept plus one token of head 1's, and the extra heads draft again from the last
  verified position. Greedy (`temperature=0`), a draft is verified when it is head 1's argmax, and
  the output is exactly greedy decoding's. Sampling (`temperature > 0`, with `top_p`), it is
  speculative *sampling* (Leviathan et al. 2023; Chen et al. 2023): a draft x drawn from its head's
  distribution q is accepted with probability min(1, p(x)/q(x)), p being head 1's distribution there
  (the same temperature / top-p as plain sampling); at the first rejection the token is drawn from
  norm(max(0, p − q)) instead, and when every draft is accepted one more is drawn from p. Completions
  are then distributed exactly as plain sampling's (`tests/unit/test_speculative_sampling.py` checks
  it, analytically and by sampling); only the draws differ, so a seed gives other completions than
  plain sampling with that seed. Either way only the
  number of forward passes changes, and `stats` reports how many drafts were accepted.
- A completion stops at end-of-sequence, at the first stop sequence (cut off there, not included), or
  after `max_new_tokens` tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from wmtp.errors import EvalError
from wmtp.eval.decoding import CachedMTP
from wmtp.eval.options import EvalOptions

_OPTIONS = EvalOptions()  # the decoding defaults are the evaluation options' (one declaration)


@dataclass(frozen=True)
class GenerationConfig:
    """How `generate` decodes: the decoding part of `EvalOptions`, plus the stop sequences and the seed."""

    max_new_tokens: int = _OPTIONS.max_new_tokens
    temperature: float = _OPTIONS.temperature  # 0 = greedy
    top_p: float = _OPTIONS.top_p  # nucleus sampling mass (1 = off)
    stop: tuple[str, ...] = ()  # cut the completion at the first of these
    seed: int = 0
    batch_size: int = _OPTIONS.batch_size  # rows decoded together
    speculative: bool = _OPTIONS.speculative  # self-speculative decoding / sampling with the extra heads

    def validate(self, model) -> "GenerationConfig":
        """The checks that need the model; each value's own range is `EvalOptions`' (wmtp.eval.options)."""
        if self.speculative and model.n_future_tokens < 2:
            raise EvalError("--speculative needs a model with extra heads (n_future_tokens ≥ 2), this one has 1")
        reserve = model.n_future_tokens if self.speculative else 1
        if self.max_new_tokens + reserve >= model.args.max_seq_len:
            raise EvalError(
                f"--max-new-tokens {self.max_new_tokens} "
                f"leaves no room for a prompt in max_seq_len={model.args.max_seq_len}"
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
    """Run the right-padded prompts: (cache, logits at each row's last prompt token `[B, H, V]`,
    each row's prompt length — the position of its first new token — as host ints)."""
    device = model_device(model)
    lengths = [len(r.prompt_ids) for r in batch]
    width = max(lengths)
    tokens = torch.zeros(len(batch), width, dtype=torch.long)
    for i, row in enumerate(batch):
        tokens[i, : lengths[i]] = torch.tensor(row.prompt_ids)
    reserve = n_heads if n_heads > 1 else 1
    cached = CachedMTP(model, len(batch), width + config.max_new_tokens + reserve, n_heads)
    logits = cached.step(tokens.to(device), [0] * len(batch), n_heads)
    last = torch.tensor(lengths, device=device) - 1
    return cached, logits[torch.arange(len(batch), device=device), last], lengths


def _commit(row: _Row, tokens: Sequence[int], tokenizer, config: GenerationConfig) -> bool:
    """Add a step's tokens to a row, in order; True when the row is finished (later tokens are dropped).

    Token by token: end-of-sequence finishes the row (not kept); a kept token that completes a stop
    sequence finishes it, the text cut there; so does the `max_new_tokens`-th token. The text is
    decoded once per call, not once per token, and not at all before the end when there are no stop
    sequences: decoding more tokens only appends text (save for U+FFFD standing for an unfinished UTF-8
    sequence at the end, which no stop sequence without U+FFFD can match), so a stop sequence in the
    text of any prefix of the step's tokens is also in the text of all of them. Only when it is (or in
    a case outside that argument) are the tokens replayed one by one to find the first.
    """
    before = len(row.generated)
    reason = None
    for token in tokens:
        if token == tokenizer.eos_id:
            reason = "eos"
            break
        row.generated.append(token)
        if len(row.generated) >= config.max_new_tokens:
            reason = "length"
            break
    if config.stop and len(row.generated) > before:
        text, exact = _completion_text(tokenizer, row.prompt_ids, row.prompt_text, row.generated)
        if not exact or _first_stop(text, config.stop) >= 0 or any("\ufffd" in stop for stop in config.stop):
            added = row.generated[before:]
            del row.generated[before:]
            for token in added:
                row.generated.append(token)
                row.text = completion_text(tokenizer, row.prompt_ids, row.prompt_text, row.generated)
                cut = _first_stop(row.text, config.stop)
                if cut >= 0:
                    row.text, row.finish_reason = row.text[:cut], "stop"
                    return True
        row.text = text
    if reason is None:
        return False
    if not config.stop and row.generated:
        row.text = completion_text(tokenizer, row.prompt_ids, row.prompt_text, row.generated)
    row.finish_reason = reason
    return True


def _first_stop(text: str, stop: Sequence[str]) -> int:
    """Where the earliest stop sequence in `text` starts, or -1."""
    return min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)


def completion_text(tokenizer, prompt_ids: list[int], prompt_text: str, generated: list[int]) -> str:
    """The generated text as it continues the prompt.

    Decoded together with the prompt and then cut: SentencePiece drops the leading space of a
    sequence's first piece, so decoding the new tokens alone would lose indentation.
    """
    return _completion_text(tokenizer, prompt_ids, prompt_text, generated)[0]


def _completion_text(tokenizer, prompt_ids, prompt_text, generated) -> tuple[str, bool]:
    """`completion_text`, and whether it came from the usual case (the full text starts with the prompt's)."""
    full = tokenizer.decode(prompt_ids + generated)
    if full.startswith(prompt_text):
        return full[len(prompt_text) :], True
    return tokenizer.decode(generated), False


def token_probs(logits: torch.Tensor, config: GenerationConfig, normalize: bool = False) -> torch.Tensor:
    """The distribution `[..., V]` sampling draws from (temperature > 0): softmax at the temperature,
    cut to the nucleus when `top_p` < 1 (the smallest set of most likely tokens whose mass reaches it).

    The nucleus is left unnormalised unless `normalize` (a draw normalises anyway); speculative
    sampling's ratios and residuals need the normalised distribution.
    """
    probs = torch.softmax(logits.float() / config.temperature, dim=-1)
    if config.top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the token that crosses it included).
        outside = sorted_probs.cumsum(-1) - sorted_probs >= config.top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        if normalize:
            probs = probs / probs.sum(-1, keepdim=True)
    return probs


def sample_next(logits_BV: torch.Tensor, config: GenerationConfig, generator: torch.Generator) -> torch.Tensor:
    """Next token per row: argmax at temperature 0, else a draw from the temperature/top-p distribution."""
    if config.temperature == 0:
        return logits_BV.argmax(-1)
    return torch.multinomial(token_probs(logits_BV, config), 1, generator=generator).squeeze(-1)


def draw(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token from each distribution of `probs` `[..., V]` (not necessarily normalised) → `[...]`."""
    return torch.multinomial(probs.flatten(0, -2), 1, generator=generator).view(probs.shape[:-1])


def acceptance_probability(p_draft: torch.Tensor, q_draft: torch.Tensor) -> torch.Tensor:
    """Speculative sampling's min(1, p(x)/q(x)) for drafts x drawn from q (so q(x) > 0)."""
    return (p_draft / q_draft).clamp(max=1.0)


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p − q)) over the last dim: where a rejected draft's token is drawn from.

    When p ≤ q everywhere (p = q: then no draft is ever rejected, save for rounding), p itself.
    """
    rest = (p - q).clamp(min=0.0)
    mass = rest.sum(-1, keepdim=True)
    return torch.where(mass > 0, rest / mass.clamp(min=torch.finfo(rest.dtype).tiny), p)


def verify_sampled(
    p_BHV: torch.Tensor, q_BKV: torch.Tensor, drafts_BK: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Speculative sampling's verification of K = H − 1 drafts per row.

    `p_BHV`: head 1's distribution at the H pending positions (position j predicts the token at j + 1,
    where draft j + 1 sits); `q_BKV` the distributions the drafts were drawn from. Returns (accepted
    drafts per row `[B]`, the next token per row `[B]`): draft j is kept with probability
    min(1, p_j(x)/q_j(x)) while every earlier one was; the token after the kept run is drawn from
    norm(max(0, p − q)) at the first rejected draft, or from p after the last draft when all are kept.
    """
    rows = torch.arange(p_BHV.shape[0], device=p_BHV.device)
    index = drafts_BK[..., None]
    accept = acceptance_probability(p_BHV[:, :-1].gather(-1, index), q_BKV.gather(-1, index)).squeeze(-1)
    uniform = torch.rand(accept.shape, generator=generator, device=accept.device, dtype=accept.dtype)
    accepted = (uniform < accept).long().cumprod(-1).sum(-1)  # [B]
    # No draft follows the last position: against q = 0 the residual there is p itself.
    q_padded = torch.cat((q_BKV, torch.zeros_like(q_BKV[:, :1])), dim=1)
    token = draw(residual(p_BHV[rows, accepted], q_padded[rows, accepted]), generator)
    return accepted, token


# ---------------------------------------------------------------- standard decoding


def _decode_standard(model, tokenizer, batch, config, generator, stats) -> None:
    cached, last_logits, positions = _prefill(model, batch, config, n_heads=1)
    next_logits = last_logits[:, 0]
    live = list(batch)
    while True:
        tokens = sample_next(next_logits, config, generator)
        host = tokens.tolist()  # the step's one device→host copy: stop sequences are checked on the host
        still = [i for i, (row, tok) in enumerate(zip(live, host)) if not _commit(row, (tok,), tokenizer, config)]
        if not still:
            return
        if len(still) < len(live):
            cached.keep_rows(still)
            tokens = tokens[torch.tensor(still, device=tokens.device)]
            positions = [positions[i] for i in still]
            live = [live[i] for i in still]
        next_logits = cached.step(tokens[:, None], positions, n_heads=1)[:, 0, 0]
        positions = [p + 1 for p in positions]
        stats.forward_passes += 1


# ---------------------------------------------------------------- self-speculative decoding


def _decode_speculative(model, tokenizer, batch, config, generator, stats) -> None:
    """Draft with heads 2..H, verify with head 1: greedy's tokens, or plain sampling's distribution."""
    n_heads = model.n_future_tokens
    sampling = config.temperature > 0
    cached, last_logits, starts = _prefill(model, batch, config, n_heads)
    # pending[:, 0] is a committed token not yet run through the model; pending[:, 1:] are drafts.
    # Prefill: head 1's next token (drawn as plain sampling draws it), then the extra heads' drafts.
    if sampling:
        probs = token_probs(last_logits, config, normalize=True)  # [B, H, V]
        pending, draft_probs = draw(probs, generator), probs[:, 1:]  # q of each draft, for its verification
    else:
        pending, draft_probs = last_logits.argmax(-1), None
    device = pending.device
    pending_host = pending.tolist()
    live = list(batch)
    finished = [_commit(row, tokens[:1], tokenizer, config) for row, tokens in zip(live, pending_host)]
    while True:
        still = [i for i, done in enumerate(finished) if not done]
        if not still:
            return
        if len(still) < len(live):
            cached.keep_rows(still)
            keep = torch.tensor(still, device=device)
            pending = pending[keep]
            draft_probs = None if draft_probs is None else draft_probs[keep]
            starts, pending_host = [starts[i] for i in still], [pending_host[i] for i in still]
            live = [live[i] for i in still]
        logits = cached.step(pending, starts, n_heads)  # [B, H(positions), H(heads), V]; pending[b] at starts[b]..
        stats.forward_passes += 1
        rows = torch.arange(len(live), device=device)
        # Head 1 at every position, the other heads at one: in one projection when that is cheaper and
        # keeps head 1's bits (and, sampling, the drafts' — whose q decides acceptance; greedy drafts
        # only decide how many tokens a step commits, never which).
        if logits.full_pays(len(live) * (n_heads - 1) if sampling else len(live) * n_heads):
            logits = logits.full()
        if sampling:
            head1 = token_probs(logits[:, :, 0], config, normalize=True)
            accepted, token = verify_sampled(head1, draft_probs, pending[:, 1:], generator)
            # The extra heads at the last kept position draft again; their q verifies the drafts next step.
            draft_probs = token_probs(logits[rows, accepted, 1:], config, normalize=True)
            drafts = draw(draft_probs, generator)
        else:
            greedy = logits[:, :, 0].argmax(-1)  # head 1 at each pending position: the true next tokens
            accepted = (pending[:, 1:] == greedy[:, :-1]).long().cumprod(-1).sum(-1)  # verified prefix of the drafts
            token = greedy[rows, accepted]  # head 1's token after the last accepted draft
            drafts = logits[rows, accepted, 1:].argmax(-1)  # extra heads at the last verified position
        pending = torch.cat([token[:, None], drafts], dim=1)
        host = torch.cat([accepted[:, None], pending], dim=1).tolist()  # the step's one device→host copy
        stats.drafted += (n_heads - 1) * len(live)
        finished = []
        for i, row in enumerate(live):
            n = host[i][0]
            stats.accepted += n
            committed = pending_host[i][1 : 1 + n] + [host[i][1]]
            finished.append(_commit(row, committed, tokenizer, config))
            starts[i] += n + 1
        pending_host = [h[1:] for h in host]
