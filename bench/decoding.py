"""Decoding tokens/s: self-speculative decoding (extra MTP heads draft, head 1 verifies) vs standard decoding.

The same model decodes the same HumanEval prompts (KV cache, HumanEval stop sequences,
`wmtp.eval.generation.generate`) four ways: greedy and self-speculative greedy, whose outputs must be
identical — only the number of forward passes may differ — and plain sampling and speculative
sampling at `--temperature` (default 0.8, as pass@10 samples), which agree in distribution only (a
unit test checks that), so their completions and token counts differ. The table shows tokens/s,
batched forward passes (prompt passes excluded), tokens a row commits per forward (1 + its accepted
drafts), the speedups and the acceptance rate of the drafted tokens. Each
pair's runs alternate (plain, speculative, speculative, plain, …) and the medians are reported.

The speedup depends on how often the extra heads agree with head 1: on a random-init model they
almost never do, so speculative decoding only costs (3 extra head blocks per pass). Hence:

    .venv/bin/python bench/decoding.py --model storage/checkpoints/<smoke run>/baseline/checkpoints/final
    .venv/bin/python bench/decoding.py                  # micro model built in a temp dir (random init)
    .venv/bin/python bench/decoding.py --fit-steps 300  # … first fitted to HumanEval code (MTP loss, all heads)

`--fit-steps` trains the model on prompt + canonical solution of the HumanEval problems *not* decoded
(the decoded prompts are held out), so the heads learn Python's regularities, not the answers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from wmtp.eval.benchmarks import load_humaneval  # noqa: E402
from wmtp.eval.generation import GenerationConfig, generate  # noqa: E402
from wmtp.model import IGNORE_INDEX, load_model, load_tokenizer, mtp_loss_memory_efficient  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="model dir / checkpoint (default: micro, temp dir)")
    parser.add_argument("--prompts", type=int, default=8, help="HumanEval prompts decoded (the first N)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=1, help="rows decoded together")
    parser.add_argument("--no-stop", action="store_true", help="ignore HumanEval's stop sequences")
    parser.add_argument("--reps", type=int, default=2, help="timed runs per mode")
    parser.add_argument("--fit-steps", type=int, default=0, help="first train the model this many steps")
    parser.add_argument("--n-layers", type=int, default=None,
                        help="replace the model by a random-init one with this many blocks (the micro model has 6: "
                             "2 trunk + 4 heads; Meta's 7B_1T_4 has 32: 28 + 4) — use with --fit-steps")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--temperature", type=float, default=0.8, help="of the sampling rows")
    parser.add_argument("--top-p", type=float, default=1.0, help="of the sampling rows")
    parser.add_argument("--seed", type=int, default=0, help="model init (micro) and sampling seed")
    return parser.parse_args(argv)


def fit(model, tokenizer, texts: list[str], steps: int, device, seq: int = 256, batch: int = 8, lr: float = 3e-3):
    """A few hundred AdamW steps of the memory-efficient MTP loss on random windows of `texts`."""
    ids = torch.tensor([t for text in texts for t in tokenizer.encode(text, bos=True, eos=True)], device=device)
    gen = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    n_heads = model.n_future_tokens
    model.train()
    for step in range(1, steps + 1):
        starts = torch.randint(0, len(ids) - seq - 1, (batch,), generator=gen).tolist()
        tokens = torch.stack([ids[s : s + seq] for s in starts])
        labels = torch.full((batch, seq, n_heads), IGNORE_INDEX, device=device)
        for k in range(n_heads):
            labels[:, : seq - k - 1, k] = tokens[:, k + 1 :]
        optimizer.zero_grad()
        loss = mtp_loss_memory_efficient(model, tokens, labels)
        optimizer.step()
        if step == 1 or step % 50 == 0 or step == steps:
            per_head = " ".join(f"{v:.2f}" for v in loss.per_head.tolist())
            print(f"  fit step {step:4d}: loss per head [{per_head}]", flush=True)
    model.eval()


def deeper(model, n_layers: int, seed: int):
    """A random-init model like `model` with `n_layers` blocks (more trunk, the same heads)."""
    from dataclasses import replace

    from wmtp.model import Transformer

    bigger = Transformer(replace(model.args, n_layers=n_layers))
    bigger.init_weights(seed)
    return bigger.eval()


def main(argv=None) -> int:
    opts = parse_args(argv)
    torch.set_num_threads(opts.threads)
    device = torch.device(opts.device)
    with tempfile.TemporaryDirectory(prefix="wmtp-bench-decoding-") as tmp:
        model_dir = opts.model
        if model_dir is None:
            from wmtp.model.micro import build_micro_models

            model_dir = build_micro_models(Path(tmp), seed=opts.seed)["micro-mtp"]
            print(f"micro model built in {model_dir} (random init)")
        model = load_model(model_dir, device=device, dtype="float32")
        tokenizer = load_tokenizer(model_dir)
    if opts.n_layers is not None:
        model = deeper(model, opts.n_layers, opts.seed).to(device)
        model_dir = f"micro-mtp with n_layers={opts.n_layers}"
    trunk, heads = model.args.n_layers - model.n_future_tokens, model.n_future_tokens
    print(f"model: {trunk} trunk blocks + {heads} head blocks, dim {model.args.dim}")
    problems = list(load_humaneval().problems.values())
    prompts = [p.prompt for p in problems[: opts.prompts]]
    if opts.fit_steps:
        print(f"fitting on {len(problems) - opts.prompts} held-out HumanEval solutions for {opts.fit_steps} steps")
        fit(model, tokenizer, [p.prompt + p.reference for p in problems[opts.prompts :]], opts.fit_steps, device)

    stop = () if opts.no_stop else load_humaneval().stop
    common = dict(max_new_tokens=opts.max_new_tokens, stop=stop, batch_size=opts.batch_size, seed=opts.seed)
    sampled = dict(temperature=opts.temperature, top_p=opts.top_p)
    configs = {
        "greedy": GenerationConfig(**common),
        "speculative": GenerationConfig(**common, speculative=True),
        "sample": GenerationConfig(**common, **sampled),
        "spec-sample": GenerationConfig(**common, **sampled, speculative=True),
    }
    pairs = (("greedy", "speculative"), ("sample", "spec-sample"))
    generate(model, tokenizer, prompts[:1], configs["greedy"])  # warm-up (allocator, kernels)
    runs = {name: [] for name in configs}
    texts = {}
    order = [m for rep in range(opts.reps) for pair in pairs for m in (pair if rep % 2 == 0 else pair[::-1])]
    for name in order:
        completions, stats = generate(model, tokenizer, prompts, configs[name])
        runs[name].append(stats)
        result = [(c.text, c.n_tokens) for c in completions]
        if texts.setdefault(name, result) != result:  # seeded: a rerun draws the same tokens
            raise AssertionError(f"{name}: outputs changed between runs")
    if texts["greedy"] != texts["speculative"]:
        first = next(i for i, (a, b) in enumerate(zip(texts["greedy"], texts["speculative"])) if a != b)
        raise AssertionError(f"speculative output differs from greedy on prompt {first}")

    print(f"\n{model_dir}: {len(prompts)} HumanEval prompts, batch {opts.batch_size}, "
          f"max {opts.max_new_tokens} new tokens, {opts.device} ({opts.threads} thread(s)), {opts.reps} runs each; "
          f"sampling at temperature {opts.temperature}, top-p {opts.top_p}")
    print(f"greedy outputs identical: {runs['greedy'][0].n_tokens} tokens generated by each greedy mode "
          "(sampled completions differ: speculative sampling matches plain sampling in distribution only)\n")
    # tokens/fwd: tokens a row commits per forward (1 + accepted drafts), whatever the batch size.
    print(f"{'':12s} {'tokens/s':>9s} {'tokens':>7s} {'forwards':>9s} {'tokens/fwd':>10s} {'acceptance':>10s}")
    rate = {}
    n_drafts = model.n_future_tokens - 1
    for name, stats in runs.items():
        rate[name] = statistics.median(s.tokens_per_second for s in stats)
        first = stats[0]
        per_forward = 1 + first.accepted / (first.drafted / n_drafts) if first.drafted else 1.0
        accept = f"{first.acceptance_rate:10.3f}" if first.drafted else f"{'':10s}"
        print(f"{name:12s} {rate[name]:9.1f} {first.n_tokens:7d} {first.forward_passes:9d} {per_forward:10.2f} {accept}")
    print()
    for plain, fast in pairs:
        spec = runs[fast][0]
        print(f"speedup {fast} / {plain}: {rate[fast] / rate[plain]:.2f}x  "
              f"(acceptance {spec.acceptance_rate:.3f}: {spec.accepted} of {spec.drafted} drafted tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
