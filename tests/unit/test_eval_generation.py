"""Generation: the batched KV-cache forward equals the model's, greedy equals an uncached reference,
self-speculative decoding equals greedy (also with heads that disagree), sampling is seeded.
Speculative sampling's distribution: `test_speculative_sampling.py`."""

from __future__ import annotations

import copy

import pytest
import torch

from wmtp.errors import EvalError
from wmtp.eval.decoding import CachedMTP
from wmtp.eval.generation import GenerationConfig, generate
from wmtp.model import IGNORE_INDEX, load_model, load_tokenizer, mtp_loss_memory_efficient

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = [
    'def add(a, b):\n    """Return the sum of a and b."""\n',
    "import math\n\n\ndef is_prime(n):\n",
    "x",
    "from typing import List\n\n\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n",
]


@pytest.fixture(scope="module")
def tokenizer(micro_models):
    return load_tokenizer(micro_models["micro-mtp"])


@pytest.fixture(scope="module")
def model64(micro_models):
    """float64, so that comparisons across different batch shapes are exact up to argmax ties."""
    return load_model(micro_models["micro-mtp"], dtype="float32").double().eval()


@pytest.fixture(scope="module")
def disagreeing_model(model64):
    """Extra heads perturbed far from anything head 1 would say: drafts are mostly wrong."""
    model = copy.deepcopy(model64)
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in model.extra_heads.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
    return model


def right_padded(tokenizer, prompts):
    ids = [tokenizer.encode(p, bos=True) for p in prompts]
    width = max(map(len, ids))
    tokens = torch.zeros(len(ids), width, dtype=torch.long)
    for i, row in enumerate(ids):
        tokens[i, : len(row)] = torch.tensor(row)
    return ids, tokens


def uncached_greedy(model, tokenizer, prompt: str, max_new_tokens: int) -> list[int]:
    """Reference: rerun the whole sequence through `model(tokens)` for every new token."""
    tokens = tokenizer.encode(prompt, bos=True)
    generated = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(model(torch.tensor([tokens]), n_heads=1)[0, -1, 0].argmax())
            if token == tokenizer.eos_id:
                break
            tokens.append(token)
            generated.append(token)
    return generated


def test_cached_forward_equals_model_forward_for_ragged_batch(micro_models, tokenizer):
    model = load_model(micro_models["micro-mtp"], dtype="float32").eval()
    ids, tokens = right_padded(tokenizer, PROMPTS)
    cached = CachedMTP(model, len(ids), tokens.shape[1] + 4, n_heads=model.n_future_tokens)
    width = tokens.shape[1]
    prefill = cached.step(tokens[:, :-2], [0] * len(ids), n_heads=4)
    last_two = cached.step(tokens[:, -2:], [width - 2] * len(ids), n_heads=4)  # incremental continuation
    logits = torch.cat([prefill.full(), last_two.full()], dim=1)
    with torch.no_grad():
        for i, row in enumerate(ids):
            reference = model(torch.tensor([row]))[0]
            if len(row) == tokens.shape[1]:  # the longest row: every position, incremental part included
                torch.testing.assert_close(logits[i], reference, atol=2e-5, rtol=1e-4)
            else:
                torch.testing.assert_close(logits[i, : len(row)], reference, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("seqlen", [1, 3])
def test_cached_steps_of_rows_at_different_positions_equal_the_models_forward(micro_models, tokenizer, seqlen):
    """Each row continues from the end of its own prompt (as decoding does): per-row RoPE, writes and mask."""
    model = load_model(micro_models["micro-mtp"], dtype="float32").eval()
    ids, tokens = right_padded(tokenizer, PROMPTS)
    extra = torch.randint(5, 1000, (len(ids), 2 * seqlen), generator=torch.Generator().manual_seed(0))
    cached = CachedMTP(model, len(ids), tokens.shape[1] + 2 * seqlen, n_heads=4)
    cached.step(tokens, [0] * len(ids), n_heads=4)
    lengths = [len(row) for row in ids]
    first = cached.step(extra[:, :seqlen], lengths, n_heads=4).full()
    cached.keep_rows([3, 1, 0])  # a row leaves the batch, the rest are reordered
    kept = [3, 1, 0]
    second = cached.step(extra[kept, seqlen:], [lengths[i] + seqlen for i in kept], n_heads=4).full()
    with torch.no_grad():
        for i, row in enumerate(ids):
            reference = model(torch.cat([torch.tensor(row), extra[i]])[None])[0, len(row) :]
            torch.testing.assert_close(first[i], reference[:seqlen], atol=2e-5, rtol=1e-4)
            if i in kept:
                torch.testing.assert_close(second[kept.index(i)], reference[seqlen:], atol=2e-5, rtol=1e-4)


def test_step_projects_to_the_vocabulary_only_the_logits_it_is_asked_for(micro_models, tokenizer):
    model = load_model(micro_models["micro-mtp"], dtype="float32").eval()
    ids, tokens = right_padded(tokenizer, PROMPTS)
    batch, width, n_heads = tokens.shape[0], tokens.shape[1], model.n_future_tokens
    cached = CachedMTP(model, batch, width + n_heads, n_heads=n_heads)
    projected = []
    output = cached.cache.output  # the norm + output projection decoding runs (`OutputProjection`)
    cached.cache.output = lambda z: projected.append(z.shape[:-1].numel()) or output(z)
    try:
        prefill = cached.step(tokens, [0] * batch, n_heads)
        rows, last = torch.arange(batch), torch.tensor([len(r) - 1 for r in ids])
        at_last = prefill[rows, last]  # as generation's prefill: every head at each row's last token
        step = cached.step(tokens[:, :n_heads], (last + 1).tolist(), n_heads)
        head1 = step[:, :, 0]  # as speculative decoding: head 1 everywhere, the others at one position
        accepted = torch.tensor([0, 1, 2, 3])
        drafts = step[rows, accepted, 1:]
        assert projected == [batch * n_heads, batch * n_heads, batch * (n_heads - 1)]
        full = step.full()
    finally:
        cached.cache.output = output
    assert step.shape == full.shape == (batch, n_heads, n_heads, model.output.out_features)
    torch.testing.assert_close(prefill.full()[rows, last], at_last, atol=1e-5, rtol=1e-5)
    for got, expected in (
        (head1, full[:, :, 0]),
        (drafts, full[rows, accepted, 1:]),
        (step[..., :5], full[..., :5]),
        (step[:, 1, 2, 7], full[:, 1, 2, 7]),
    ):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_batched_greedy_equals_uncached_reference(model64, tokenizer):
    config = GenerationConfig(max_new_tokens=24, batch_size=3)
    completions, stats = generate(model64, tokenizer, PROMPTS, config)
    for prompt, completion in zip(PROMPTS, completions):
        expected = uncached_greedy(model64, tokenizer, prompt, 24)
        assert completion.n_tokens == len(expected)
        ids = tokenizer.encode(prompt, bos=True)
        assert completion.text == tokenizer.decode(ids + expected)[len(tokenizer.decode(ids)) :]
    assert stats.n_tokens == sum(c.n_tokens for c in completions) and stats.tokens_per_second > 0


@pytest.mark.parametrize("which", ["micro-mtp", "heads-disagree"])
def test_self_speculative_output_equals_greedy(model64, disagreeing_model, tokenizer, which):
    model = model64 if which == "micro-mtp" else disagreeing_model
    config = GenerationConfig(max_new_tokens=40, batch_size=2)
    greedy, greedy_stats = generate(model, tokenizer, PROMPTS, config)
    speculative, stats = generate(
        model, tokenizer, PROMPTS, GenerationConfig(max_new_tokens=40, batch_size=2, speculative=True)
    )
    assert [c.text for c in speculative] == [c.text for c in greedy]
    assert [c.n_tokens for c in speculative] == [c.n_tokens for c in greedy]
    assert stats.drafted > 0 and 0 <= stats.acceptance_rate <= 1
    assert stats.forward_passes <= greedy_stats.forward_passes


@pytest.mark.parametrize("which", ["micro-mtp", "heads-disagree"])
def test_self_speculative_with_stop_sequences_equals_greedy(model64, disagreeing_model, tokenizer, which):
    """A speculative step commits several tokens at once, its text decoded once: the completion must
    still end at the first token that completes a stop sequence, exactly as greedy's token by token."""
    model = model64 if which == "micro-mtp" else disagreeing_model
    free, _ = generate(model, tokenizer, PROMPTS, GenerationConfig(max_new_tokens=40, batch_size=2))
    # Stops cut from the middle of the free completions (some rows stop, some run to the end), plus one
    # that never occurs.
    stop = tuple(c.text[len(c.text) // 2 : len(c.text) // 2 + 2] for c in free[:2] if len(c.text) > 4) + ("\x00",)
    config = dict(max_new_tokens=40, batch_size=2, stop=stop)
    greedy, _ = generate(model, tokenizer, PROMPTS, GenerationConfig(**config))
    speculative, _ = generate(model, tokenizer, PROMPTS, GenerationConfig(**config, speculative=True))
    assert any(c.finish_reason == "stop" for c in greedy)
    assert [(c.text, c.n_tokens, c.finish_reason) for c in speculative] == [
        (c.text, c.n_tokens, c.finish_reason) for c in greedy
    ]


def test_committing_several_tokens_at_once_stops_where_one_at_a_time_does(tokenizer):
    """`_commit` decodes a step's tokens once: the row must end as it would token by token (stop cut,
    end-of-sequence, length), whatever the step sizes — stops inside a step included."""
    from wmtp.eval.generation import _commit, _Row

    text = "def f(x):\n    return x + 1\n\n\nclass A:\n    pass\n# done\n"
    ids = tokenizer.encode(text)
    prompt = tokenizer.encode("import os\n", bos=True)
    cases = [
        ((), 100),
        (("\nclass",), 100),
        (("+ 1", "\n#"), 100),
        (("pass",), 100),
        (("\nclass",), 5),
        (("nowhere",), len(ids) + 5),
    ]
    for stop, max_new in cases:
        for tail in ([], [tokenizer.eos_id, 5, 6]):
            tokens = ids[:7] + tail + ids[7:] if tail else ids
            config = GenerationConfig(max_new_tokens=max_new, stop=stop)
            ends = []
            for size in (1, 2, 3, 4):
                row = _Row(0, prompt, False, tokenizer.decode(prompt))
                for start in range(0, len(tokens), size):
                    if _commit(row, tokens[start : start + size], tokenizer, config):
                        break
                ends.append((row.generated, row.text, row.finish_reason))
            assert all(end == ends[0] for end in ends), (stop, max_new, tail)
            assert ends[0][2] is not None or not tail


@pytest.mark.slow
def test_self_speculative_accepts_drafts_once_the_heads_have_learned(model64, tokenizer):
    """Overfit a copy on one text: head 1 and the drafts now agree, so most drafts are accepted."""
    model = copy.deepcopy(model64).float().train()
    text = "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n"
    tokens = torch.tensor([tokenizer.encode(text, bos=True, eos=True)])
    labels = torch.full((1, tokens.shape[1], 4), IGNORE_INDEX)
    for k in range(4):
        labels[0, : tokens.shape[1] - k - 1, k] = tokens[0, k + 1 :]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        optimizer.zero_grad()
        mtp_loss_memory_efficient(model, tokens, labels)
        optimizer.step()
    model = model.double().eval()
    prompt = "def fib(n):\n"
    greedy, _ = generate(model, tokenizer, [prompt], GenerationConfig(max_new_tokens=30))
    speculative, stats = generate(model, tokenizer, [prompt], GenerationConfig(max_new_tokens=30, speculative=True))
    assert speculative[0].text == greedy[0].text
    assert greedy[0].text.startswith("    if n < 2:"), greedy[0].text
    assert stats.acceptance_rate > 0.5, stats.to_dict()


def test_stop_sequence_cuts_the_completion(model64, tokenizer):
    free, _ = generate(model64, tokenizer, PROMPTS[:1], GenerationConfig(max_new_tokens=30))
    text = free[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    stopped, _ = generate(model64, tokenizer, PROMPTS[:1], GenerationConfig(max_new_tokens=30, stop=(stop,)))
    assert stopped[0].finish_reason == "stop"
    assert stopped[0].text == text[: text.find(stop)]
    assert free[0].finish_reason in ("length", "eos") and free[0].n_tokens <= 30


def test_seeded_sampling_is_reproducible(model64, tokenizer):
    def sample(seed):
        config = GenerationConfig(max_new_tokens=20, temperature=1.0, top_p=0.95, seed=seed)
        return [c.text for c in generate(model64, tokenizer, PROMPTS, config)[0]]

    assert sample(0) == sample(0)
    assert sample(0) != sample(1)


def test_tiny_top_p_keeps_only_the_most_likely_token(model64, tokenizer):
    greedy, _ = generate(model64, tokenizer, PROMPTS, GenerationConfig(max_new_tokens=15))
    nucleus, _ = generate(model64, tokenizer, PROMPTS, GenerationConfig(max_new_tokens=15, temperature=1.0, top_p=1e-9))
    assert [c.text for c in nucleus] == [c.text for c in greedy]


@pytest.mark.parametrize("which", ["micro-mtp", "heads-disagree"])
def test_speculative_sampling_with_one_token_nuclei_is_greedy(model64, disagreeing_model, tokenizer, which):
    """top_p → 0 makes p and every q one-hot: acceptance is then 1 for head 1's argmax and 0 otherwise,
    the residual is head 1's argmax — speculative sampling must reduce to greedy decoding exactly."""
    model = model64 if which == "micro-mtp" else disagreeing_model
    greedy, _ = generate(model, tokenizer, PROMPTS, GenerationConfig(max_new_tokens=30, batch_size=3))
    config = GenerationConfig(max_new_tokens=30, batch_size=3, temperature=1.0, top_p=1e-9, speculative=True)
    sampled, stats = generate(model, tokenizer, PROMPTS, config)
    assert [c.text for c in sampled] == [c.text for c in greedy]
    assert stats.drafted > 0


def test_speculative_sampling_is_seeded_and_reports_acceptance(model64, tokenizer):
    def sample(seed):
        config = GenerationConfig(
            max_new_tokens=20, temperature=0.8, top_p=0.95, seed=seed, batch_size=3, speculative=True
        )
        completions, stats = generate(model64, tokenizer, PROMPTS, config)
        return [c.text for c in completions], stats

    (first, stats), (again, _), (other, _) = sample(0), sample(0), sample(1)
    assert first == again and first != other
    assert stats.drafted > 0 and 0 <= stats.acceptance_rate <= 1
    assert stats.forward_passes > 0 and stats.n_tokens > 0


def test_long_prompt_is_truncated_from_the_left(model64, tokenizer):
    long_prompt = "x = 1\n" * 2000
    completions, _ = generate(model64, tokenizer, [long_prompt, "x"], GenerationConfig(max_new_tokens=4))
    assert completions[0].prompt_truncated and not completions[1].prompt_truncated


def test_bad_generation_options(micro_models, model64, tokenizer):
    reference = load_model(micro_models["micro-ref"], dtype="float32")
    cases = [
        (reference, GenerationConfig(speculative=True), "needs a model with extra heads"),
        (model64, GenerationConfig(max_new_tokens=5000), "--max-new-tokens 5000"),
    ]
    for model, config, message in cases:
        with pytest.raises(EvalError, match=message):
            generate(model, tokenizer, ["x"], config)
