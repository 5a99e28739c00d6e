"""Speculative sampling (`--speculative` at temperature > 0) samples exactly plain sampling's distribution.

A tiny random MTP model (vocab 8, 2 trunk blocks + 3 heads, weights scaled up so that every head's
distribution is far from uniform and the extra heads disagree with head 1) makes both checks cheap:

1. Analytic, exact to 1e-6 (the probabilities are float32, as generation computes them). From the model's
   own distributions at a prompt — p for head 1
   after the prompt + each first token c (and after each second token a), q₂ and q₃ for the drafts
   heads 2 and 3 make of the two tokens after c — the first verification step's output distribution is
   enumerated over every draft, using generation's own `acceptance_probability` and `residual`:

       P(a, b | c) = q₂(a)·α₂(a)·[Σ_d q₃(d)·α₃(d | a)·1{d = b} + (1 − Σ_d q₃(d)·α₃(d | a))·r₃(b | a)]
                   + (1 − Σ_d q₂(d)·α₂(d))·r₂(a)·p(b | c, a)

   (α = min(1, p/q), r = norm(max(0, p − q)); after a rejected first draft the second token comes from
   the next step, which by the first line's argument is p(· | c, a)). It must equal p(a | c)·p(b | c, a),
   and its marginal p(a | c), for every c, a, b — with temperature alone and with top-p.

2. Empirical, through `generate` end to end. N = 24,000 completions of 3 tokens each by plain sampling
   and by speculative sampling (fixed seeds; rows decoded 6,000 at a time). The reference is the exact
   joint distribution P of the 3 tokens (8³ = 512 outcomes), computed by the model's full forward on
   every continuation. Two tolerances, both derived from N:

   - χ² goodness of fit of each sampler's counts to P (outcomes with expected count < 5 pooled into
     one cell): the statistic must stay below the χ² quantile at 1 − 10⁻⁶ for its degrees of freedom
     (Wilson–Hilferty), i.e. a correct sampler fails this with probability 10⁻⁶;
   - total variation between the two samplers' empirical distributions: below
     Σ over the two samplers of ½·Σᵢ √(Pᵢ(1 − Pᵢ)/N) + √(ln(10⁶)/(2N)) — the first term bounds
     E[TV(empirical, P)] (Jensen), the second is McDiarmid's deviation at 10⁻⁶ (changing one sample
     moves TV by at most 1/N); with the triangle inequality this holds with probability ≥ 1 − 2·10⁻⁶.
     Here it is about 0.13 (the samplers measured 0.05 apart); the statistics are printed on failure.

   Negative controls: the same test with acceptance forced to 1 (every draft kept) and with the
   rejected token drawn from p instead of the residual must fail the χ² check — so it has the power
   to see a wrong acceptance rule.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from wmtp.eval import generation
from wmtp.eval.generation import GenerationConfig, acceptance_probability, generate, residual, token_probs
from wmtp.model import ModelArgs, Transformer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB, N_NEW, PROMPT = 8, 3, "bcdb"
N_SAMPLES, BATCH = 24_000, 6_000
CHI2_Z = 4.753  # standard normal quantile at 1 − 1e-6
DELTA = 1e-6


class Letters:
    """Token i ↔ letter chr(97 + i); no bos / eos in the text, and an eos that is never generated."""

    bos_id, eos_id, pad_id = -2, -1, -3

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        return [ord(ch) - 97 for ch in text]

    def decode(self, ids) -> str:
        return "".join(chr(97 + int(i)) for i in ids if int(i) >= 0)


@pytest.fixture(scope="module")
def tiny():
    args = ModelArgs(
        dim=32, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=VOCAB, multiple_of=16, n_future_tokens=3, max_seq_len=16
    )
    model = Transformer(args)
    model.init_weights(0)
    with torch.no_grad():  # far from uniform, heads disagreeing (max probabilities ≈ 0.25–0.35 at T = 0.8)
        model.output.weight.mul_(10.0)
        for block in [*model.layers, *model.extra_heads]:
            block.attention.wo.weight.mul_(2.5)
            block.feed_forward.w2.weight.mul_(2.5)
    return model.double().eval()


def exact_joint(model, config: GenerationConfig) -> torch.Tensor:
    """P(g0, g1, g2) `[V, V, V]` of plain sampling, from the full forward of every continuation."""
    prompt = Letters().encode(PROMPT)
    grid = torch.cartesian_prod(*[torch.arange(VOCAB)] * (N_NEW - 1))  # every (g0, g1)
    tokens = torch.cat([torch.tensor(prompt).expand(len(grid), -1), grid], dim=1)
    with torch.no_grad():
        probs = token_probs(model(tokens, n_heads=1)[:, :, 0], config, normalize=True)  # [V², S, V]
    n = len(prompt)
    p0 = probs[0, n - 1]  # g0 | prompt
    p1 = probs[:, n].view(VOCAB, VOCAB, VOCAB)[:, 0]  # g1 | g0 (any g1 in the grid: take the first)
    p2 = probs[:, n + 1].view(VOCAB, VOCAB, VOCAB)  # g2 | g0, g1
    return p0[:, None, None] * p1[:, :, None] * p2


def sampled_counts(model, config: GenerationConfig):
    """Counts `[V³]` of the first 3 generated tokens over N_SAMPLES completions of PROMPT, and the stats."""
    completions, stats = generate(model, Letters(), [PROMPT] * N_SAMPLES, config)
    assert all(c.n_tokens == N_NEW for c in completions)
    counts = Counter(c.text for c in completions)
    table = torch.zeros(VOCAB**N_NEW, dtype=torch.float64)
    for text, count in counts.items():
        a, b, c = Letters().encode(text)
        table[(a * VOCAB + b) * VOCAB + c] = count
    return table, stats


def chi2_check(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, float]:
    """(χ² statistic, its 1 − 1e-6 quantile) of counts against probabilities, small cells pooled."""
    expected = probs * counts.sum()
    big = expected >= 5
    observed = torch.cat([counts[big], counts[~big].sum()[None]])
    expected = torch.cat([expected[big], expected[~big].sum()[None]])
    keep = expected > 0
    statistic = float(((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum())
    dof = int(keep.sum()) - 1
    quantile = dof * (1 - 2 / (9 * dof) + CHI2_Z * math.sqrt(2 / (9 * dof))) ** 3  # Wilson–Hilferty
    return statistic, quantile


def tv_tolerance(probs: torch.Tensor, n: int) -> float:
    """Bound on TV(empirical of n draws, probs) exceeded with probability ≤ DELTA (see the module doc)."""
    return float(0.5 * (probs * (1 - probs) / n).sqrt().sum() + math.sqrt(math.log(1 / DELTA) / (2 * n)))


CONFIGS = {"temperature": dict(temperature=0.8), "temperature+top_p": dict(temperature=0.8, top_p=0.9)}


@pytest.mark.parametrize("options", CONFIGS.values(), ids=CONFIGS.keys())
def test_one_verification_step_outputs_exactly_head_1s_distribution(tiny, options):
    config = GenerationConfig(**options)
    prompt = torch.tensor([Letters().encode(PROMPT)])
    n = prompt.shape[1]
    rejections = []
    with torch.no_grad():
        drafts_q = token_probs(
            tiny(prompt)[0, n - 1, 1:], config, normalize=True
        )  # heads 2, 3 after the prompt: q₂, q₃
        for c in range(VOCAB):
            grid = torch.cat([prompt.expand(VOCAB, -1), torch.full((VOCAB, 1), c), torch.arange(VOCAB)[:, None]], 1)
            probs = token_probs(tiny(grid, n_heads=1)[:, :, 0], config, normalize=True)
            p1, p2 = probs[0, n], probs[:, n + 1]  # p(a | c) [V]; p(b | c, a) [V(a), V(b)]
            q2, q3 = drafts_q
            alpha2 = torch.where(q2 > 0, acceptance_probability(p1, q2), 0.0)  # α₂(d) (d with q₂(d) = 0 never drawn)
            alpha3 = torch.where(q3 > 0, acceptance_probability(p2, q3), 0.0)  # α₃(d | a) [V(a), V(d)]
            reject2 = 1 - (q2 * alpha2).sum()
            reject3 = 1 - (q3 * alpha3).sum(-1)  # [V(a)]
            first = q2 * alpha2 + reject2 * residual(p1, q2)  # the first token's distribution
            joint = (q2 * alpha2)[:, None] * (q3 * alpha3 + reject3[:, None] * residual(p2, q3)) + (
                reject2 * residual(p1, q2)
            )[:, None] * p2
            torch.testing.assert_close(first, p1, atol=1e-6, rtol=0)
            torch.testing.assert_close(joint, p1[:, None] * p2, atol=1e-6, rtol=0)
            rejections.append(float(reject2))
    print("P(first draft rejected | c):", [round(r, 3) for r in rejections])
    assert sum(0.05 < r < 0.95 for r in rejections) >= VOCAB // 2, "the check should see acceptance and rejection"


@pytest.fixture(scope="module")
def plain_and_exact(tiny):
    config = GenerationConfig(max_new_tokens=N_NEW, temperature=0.8, batch_size=BATCH, seed=1)
    counts, _ = sampled_counts(tiny, config)
    return counts, exact_joint(tiny, config).flatten()


def speculative(tiny, seed: int = 2):
    config = GenerationConfig(max_new_tokens=N_NEW, temperature=0.8, batch_size=BATCH, seed=seed, speculative=True)
    return sampled_counts(tiny, config)


@pytest.mark.slow
def test_speculative_sampling_matches_plain_sampling_in_distribution(tiny, plain_and_exact):
    plain, exact = plain_and_exact
    spec, stats = speculative(tiny)
    assert 0.1 < stats.acceptance_rate < 0.9, stats.to_dict()  # drafts both kept and rejected
    for name, counts in (("plain", plain), ("speculative", spec)):
        statistic, quantile = chi2_check(counts, exact)
        assert statistic < quantile, f"{name}: χ² {statistic:.1f} ≥ {quantile:.1f}"
    tv = float(0.5 * (plain / plain.sum() - spec / spec.sum()).abs().sum())
    tolerance = 2 * tv_tolerance(exact, N_SAMPLES)
    assert tv < tolerance, f"TV(plain, speculative) = {tv:.4f} ≥ {tolerance:.4f}"


WRONG_RULES = {
    "always accept": dict(acceptance_probability=lambda p, q: torch.ones_like(p)),
    "rejected token from p": dict(residual=lambda p, q: p),
}


@pytest.mark.slow
@pytest.mark.parametrize("wrong", WRONG_RULES.values(), ids=WRONG_RULES.keys())
def test_a_wrong_acceptance_rule_fails_the_distribution_check(tiny, plain_and_exact, monkeypatch, wrong):
    _, exact = plain_and_exact
    for name, function in wrong.items():
        monkeypatch.setattr(generation, name, function)
    spec, _ = speculative(tiny)
    statistic, quantile = chi2_check(spec, exact)
    assert statistic > quantile, f"χ² {statistic:.1f} < {quantile:.1f}: the check cannot see this bug"
