"""Decoding tokens/s: our greedy, our self-speculative greedy and Hugging Face `generate`, side by side.

The same weights decode the same prompts at each `--batch-sizes` entry (default 1 and 8), three ways,
runs alternating (greedy, speculative, hf, then hf, speculative, greedy, …; medians reported):

- **greedy**: `wmtp.eval.generation.generate` with the KV cache, head 1 only.
- **speculative**: the same with `speculative=True` (heads 2..H draft, head 1 verifies). Its output
  must be token for token greedy's: the script stops with an error otherwise (in float32; in bf16 a
  near-tie may round the other way in a 4-position pass, so there it reports the agreement instead).
- **hf**: the next-token path exported by `wmtp.model.hf.export_hf` (`wmtp model export-hf`) and loaded
  as a transformers `LlamaForCausalLM`, `generate(do_sample=False)` with the same prompt ids, left-padded
  with an attention mask in batches of the same rows, the same `max_new_tokens` and end-of-sequence id.
  Counted the same way: the tokens before end-of-sequence. Its completions are compared with greedy's
  row by row: float rounding of a differently ordered computation can flip a near-tie argmax, after
  which the two continue differently, so the bench reports the fraction of identical rows.

No stop sequences by default (a completion ends at end-of-sequence or `--max-new-tokens`), so all three
generate the same number of tokens for identical rows. `--humaneval-stop` applies HumanEval's stop
sequences to our modes; `hf` is then left out (transformers' `stop_strings` cut differently).

Prompts (`--prompts-from`): `pycode` (default when the split exists) — `--prompts` records of the held-out
test split of the stdlib corpus (`storage/datasets_v2/pycode/processed/test.jsonl`), spread evenly over
it, each record's `instruction` in the Alpaca template the model was trained with — or `humaneval`
(the first `--prompts` problems). Model: `--model` (default `storage/models_v2/pycode-mtp` when it
exists, else the random-init micro model built in a temp dir; `--n-layers`/`--fit-steps` make and fit a
deeper one, see below). `--sampling` adds plain sampling vs speculative sampling at `--temperature`.

    .venv/bin/python bench/decoding.py                                   # pycode-mtp, batch 1 and 8
    .venv/bin/python bench/decoding.py --clock cpu --reps 5              # on a busy shared machine
    .venv/bin/python bench/decoding.py --device cuda                     # bf16 on a GPU, both sides
    .venv/bin/python bench/decoding.py --model storage/models_v2/micro-mtp --prompts-from humaneval \\
        --n-layers 16 --fit-steps 300                                    # 12 + 4 blocks fitted on HumanEval

`--fit-steps` trains on prompt + solution of the HumanEval problems *not* decoded (the decoded prompts
are held out), so the heads learn Python's regularities, not the answers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from wmtp.eval.generation import GenerationConfig, completion_text, generate  # noqa: E402
from wmtp.model import IGNORE_INDEX, load_model, load_tokenizer, mtp_loss_memory_efficient  # noqa: E402

PYCODE_MODEL = Path("storage/models_v2/pycode-mtp")
PYCODE_TEST = Path("storage/datasets_v2/pycode/processed/test.jsonl")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help=f"model dir / checkpoint (default: {PYCODE_MODEL} if it exists, else micro in a temp dir)",
    )
    parser.add_argument(
        "--prompts-from",
        choices=("pycode", "humaneval"),
        default=None,
        help="pycode: held-out test split of the stdlib corpus (default when present); humaneval",
    )
    parser.add_argument("--pycode-test", type=Path, default=PYCODE_TEST, help="the pycode test split (JSONL)")
    parser.add_argument("--prompts", type=int, default=16, help="prompts decoded")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-sizes", default="1,8", help="comma-separated: each is a full run of every mode")
    parser.add_argument(
        "--humaneval-stop",
        action="store_true",
        help="apply HumanEval's stop sequences (our modes only; hf is then left out)",
    )
    parser.add_argument("--no-hf", action="store_true", help="leave Hugging Face generate out")
    parser.add_argument(
        "--sampling", action="store_true", help="also plain sampling vs speculative sampling at --temperature / --top-p"
    )
    parser.add_argument("--reps", type=int, default=3, help="timed runs per mode and batch size")
    parser.add_argument("--fit-steps", type=int, default=0, help="first train the model this many steps")
    parser.add_argument(
        "--n-layers",
        type=int,
        default=None,
        help="replace the model by a random-init one with this many blocks (the micro model has 6: "
        "2 trunk + 4 heads; Meta's 7B_1T_4 has 32: 28 + 4) — use with --fit-steps",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="float32 (default on CPU) or bfloat16 (default on CUDA)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--temperature", type=float, default=0.8, help="of the sampling rows")
    parser.add_argument("--top-p", type=float, default=1.0, help="of the sampling rows")
    parser.add_argument("--seed", type=int, default=0, help="model init (micro) and sampling seed")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="time runs by wall clock, or by this process's CPU time (on a machine shared with "
        "other jobs, time spent preempted then does not count)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser.parse_args(argv)


# ---------------------------------------------------------------- model and prompts


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


def pycode_prompts(path: Path, n: int) -> list[str]:
    """Alpaca prompts of `n` records spread evenly over the split (its files are in order, so the spread
    spans many modules), as the model saw prompts in training."""
    from wmtp.data.template import format_prompt

    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    picks = sorted({round(i * (len(records) - 1) / max(n - 1, 1)) for i in range(min(n, len(records)))})
    return [format_prompt(records[i]["instruction"], records[i].get("input", "")) for i in picks]


# ---------------------------------------------------------------- runs


@dataclass
class Run:
    seconds: float
    tokens: int
    rows: list  # per prompt: (n_tokens, text) — what agreement compares
    stats: object = None
    extra: dict = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


CLOCK = time.perf_counter  # `--clock cpu`: time.process_time


def run_ours(model, tokenizer, prompts, config) -> Run:
    started = CLOCK()
    completions, stats = generate(model, tokenizer, prompts, config)
    seconds = CLOCK() - started
    return Run(seconds, stats.n_tokens, [(c.n_tokens, c.text) for c in completions], stats)


def run_hf(hf_model, tokenizer, prompts, batch_size: int, max_new_tokens: int, keep: int) -> Run:
    """Greedy `generate` over the prompts in our batches (longest first, left-padded), timed end to end."""
    device = hf_model.device
    ids = [tokenizer.encode(p, bos=True, eos=False)[-keep:] for p in prompts]
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    rows: list = [None] * len(ids)
    tokens = 0
    started = CLOCK()
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        width = max(len(ids[i]) for i in batch)
        input_ids = torch.full((len(batch), width), tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for j, i in enumerate(batch):
            input_ids[j, width - len(ids[i]) :] = torch.tensor(ids[i])
            mask[j, width - len(ids[i]) :] = 1
        with torch.inference_mode():
            out = hf_model.generate(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                do_sample=False,
                num_beams=1,
                max_new_tokens=max_new_tokens,
                eos_token_id=tokenizer.eos_id,
                pad_token_id=tokenizer.pad_id,
            )
        for j, i in enumerate(batch):
            new = out[j, width:].tolist()  # the device→host copy ends the timing of a GPU batch too
            if tokenizer.eos_id in new:  # ours stops at end-of-sequence without keeping it
                new = new[: new.index(tokenizer.eos_id)]
            rows[i] = (len(new), new)
            tokens += len(new)
    seconds = CLOCK() - started
    texts = [(n, completion_text(tokenizer, ids[i], tokenizer.decode(ids[i]), new)) for i, (n, new) in enumerate(rows)]
    return Run(seconds, tokens, texts)


def per_forward(stats, n_drafts: int) -> float:
    """Tokens a row commits per decoding forward: 1 + its accepted drafts."""
    return 1 + stats.accepted / (stats.drafted / n_drafts) if stats.drafted else 1.0


def main(argv=None) -> int:
    global CLOCK
    opts = parse_args(argv)
    CLOCK = time.process_time if opts.clock == "cpu" else time.perf_counter
    torch.set_num_threads(opts.threads)
    device = torch.device(opts.device)
    dtype_name = opts.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    dtype = getattr(torch, dtype_name)
    tmp_dir = tempfile.TemporaryDirectory(prefix="wmtp-bench-decoding-")
    tmp = Path(tmp_dir.name)
    model_dir = opts.model
    if model_dir is None:
        if PYCODE_MODEL.is_dir() and (PYCODE_MODEL / "report.json").is_file():
            model_dir = PYCODE_MODEL
        else:
            from wmtp.model.micro import build_micro_models

            model_dir = build_micro_models(tmp, seed=opts.seed)["micro-mtp"]
            print(f"{PYCODE_MODEL} not built yet: micro model built in {model_dir} (random init)")
    model = load_model(model_dir, dtype="float32").eval()  # on the CPU until the HF export is written
    tokenizer = load_tokenizer(model_dir)
    label = str(model_dir)
    if opts.n_layers is not None:
        model = deeper(model, opts.n_layers, opts.seed)
        label = f"{model_dir} with n_layers={opts.n_layers} (random init)"
    model = model.to(device)
    source = opts.prompts_from or ("pycode" if opts.pycode_test.is_file() else "humaneval")
    if source == "pycode":
        prompts = pycode_prompts(opts.pycode_test, opts.prompts)
    else:
        from wmtp.eval.benchmarks import load_humaneval

        problems = list(load_humaneval().problems.values())
        prompts = [p.prompt for p in problems[: opts.prompts]]
    if opts.fit_steps:
        from wmtp.eval.benchmarks import load_humaneval

        problems = list(load_humaneval().problems.values())
        held = set(prompts)
        texts = [p.prompt + p.reference for p in problems if p.prompt not in held]
        print(f"fitting on {len(texts)} HumanEval solutions (none of the decoded prompts) for {opts.fit_steps} steps")
        fit(model, tokenizer, texts, opts.fit_steps, device)
        label += f", fitted {opts.fit_steps} steps"
    trunk, heads = model.args.n_layers - model.n_future_tokens, model.n_future_tokens
    print(
        f"model: {label}: {trunk} trunk blocks + {heads} head blocks, dim {model.args.dim}, "
        f"vocab {model.args.vocab_size}; {len(prompts)} {source} prompts; {device.type} {dtype_name}, "
        f"{opts.threads} thread(s)",
        flush=True,
    )

    use_hf = not opts.no_hf and not opts.humaneval_stop
    hf_model = None
    if use_hf:
        from transformers import LlamaForCausalLM
        from transformers.utils import logging as hf_logging

        from wmtp.model.checkpoint import save_model

        hf_logging.disable_progress_bar()
        from wmtp.model.hf import export_hf

        saved = save_model(model.cpu(), tmp / "ours", source="bench/decoding.py", tokenizer_model=Path(tokenizer.path))
        summary = export_hf(saved, tmp / "hf")
        hf_model = LlamaForCausalLM.from_pretrained(tmp / "hf", dtype=dtype).to(device).eval()
        print(
            f"hf: exported {summary['layers']} layers (trunk + head 1) to a LlamaForCausalLM "
            f"(attention: {hf_model.config._attn_implementation})",
            flush=True,
        )
    model = model.to(device=device, dtype=dtype)

    if opts.humaneval_stop:
        from wmtp.eval.benchmarks import load_humaneval

        stop = tuple(load_humaneval().stop)
    else:
        stop = ()
    batch_sizes = [int(b) for b in opts.batch_sizes.split(",") if b.strip()]
    keep = model.args.max_seq_len - opts.max_new_tokens - model.n_future_tokens  # generate()'s own prompt cut
    n_drafts = model.n_future_tokens - 1
    results = []
    for batch_size in batch_sizes:
        common = dict(max_new_tokens=opts.max_new_tokens, stop=stop, batch_size=batch_size, seed=opts.seed)
        configs = {"greedy": GenerationConfig(**common), "speculative": GenerationConfig(**common, speculative=True)}
        if opts.sampling:
            sampled = dict(temperature=opts.temperature, top_p=opts.top_p)
            configs["sample"] = GenerationConfig(**common, **sampled)
            configs["spec-sample"] = GenerationConfig(**common, **sampled, speculative=True)
        modes = list(configs) + (["hf"] if use_hf else [])

        def once(mode: str, batch_size: int = batch_size, configs: dict = configs) -> Run:
            if mode == "hf":
                return run_hf(hf_model, tokenizer, prompts, batch_size, opts.max_new_tokens, keep)
            return run_ours(model, tokenizer, prompts, configs[mode])

        for mode in modes:  # warm-up: allocator, kernels, the decoding weights
            if mode == "hf":
                run_hf(hf_model, tokenizer, prompts[:batch_size], batch_size, 8, keep)
            else:
                generate(model, tokenizer, prompts[:batch_size], configs[mode])
        runs = {mode: [] for mode in modes}
        for rep in range(opts.reps):
            for mode in modes if rep % 2 == 0 else modes[::-1]:
                run = once(mode)
                if runs[mode] and run.rows != runs[mode][0].rows:  # seeded or greedy: a rerun is identical
                    raise AssertionError(f"{mode}: outputs changed between runs")
                runs[mode].append(run)
                print(f"  batch {batch_size} rep {rep} {mode:12s} {run.rate:8.1f} tok/s", flush=True)
        first = {mode: runs[mode][0] for mode in modes}
        greedy_rows, spec_rows = first["greedy"].rows, first["speculative"].rows
        spec_same = sum(a == b for a, b in zip(greedy_rows, spec_rows)) / len(prompts)
        if spec_same < 1:
            bad = next(i for i, (a, b) in enumerate(zip(greedy_rows, spec_rows)) if a != b)
            if dtype == torch.float32:
                raise AssertionError(f"batch {batch_size}: speculative output differs from greedy on prompt {bad}")
            print(
                f"  note: in {dtype_name} speculative differs from greedy on {1 - spec_same:.0%} of the rows "
                "(a near-tie rounded the other way in a 4-position pass)"
            )
        rate = {mode: statistics.median(r.rate for r in runs[mode]) for mode in modes}
        spec_stats = first["speculative"].stats
        result = {
            "batch_size": batch_size,
            "prompts": len(prompts),
            "tokens": first["greedy"].tokens,
            "tokens_per_forward": per_forward(spec_stats, n_drafts),
            "acceptance": spec_stats.acceptance_rate,
            "forwards": {m: first[m].stats.forward_passes for m in configs},
            "tok_s": rate,
            "spec_over_greedy": rate["speculative"] / rate["greedy"],
            "speculative_identical_rows": spec_same,
        }
        if use_hf:
            hf_rows = first["hf"].rows
            result["hf_identical_rows"] = sum(a == b for a, b in zip(greedy_rows, hf_rows)) / len(prompts)
            result["hf_tokens"] = first["hf"].tokens
            result["ours_over_hf"] = rate["greedy"] / rate["hf"]
            result["spec_over_hf"] = rate["speculative"] / rate["hf"]
        if opts.sampling:
            result["spec_sample_over_sample"] = rate["spec-sample"] / rate["sample"]
            result["sampling_tokens_per_forward"] = per_forward(first["spec-sample"].stats, n_drafts)
            result["sampling_acceptance"] = first["spec-sample"].stats.acceptance_rate
        results.append(result)

    print(
        f"\n{label}: {len(prompts)} {source} prompts, max {opts.max_new_tokens} new tokens, "
        f"{'HumanEval stop sequences' if stop else 'no stop sequences'}, {device.type} {dtype_name} "
        f"({opts.threads} thread(s)), {opts.clock} clock, median of {opts.reps} runs; "
        f"load average {os.getloadavg()[0]:.1f}\n"
    )
    print(
        f"{'batch':>5s} {'tokens':>6s} {'tok/fwd':>7s} {'accept':>6s} {'greedy':>8s} {'spec':>8s} {'hf':>8s} "
        f"{'spec/greedy':>11s} {'greedy/hf':>9s} {'spec/hf':>7s} {'spec=greedy':>11s} {'hf=greedy':>9s}"
    )
    for r in results:
        hf = "hf" in r["tok_s"]
        cells = [
            f"{r['batch_size']:5d}",
            f"{r['tokens']:6d}",
            f"{r['tokens_per_forward']:7.2f}",
            f"{r['acceptance']:6.3f}",
            f"{r['tok_s']['greedy']:8.1f}",
            f"{r['tok_s']['speculative']:8.1f}",
            f"{r['tok_s']['hf']:8.1f}" if hf else f"{'-':>8s}",
            f"{r['spec_over_greedy']:10.2f}x",
            f"{r['ours_over_hf']:8.2f}x" if hf else f"{'-':>9s}",
            f"{r['spec_over_hf']:6.2f}x" if hf else f"{'-':>7s}",
            f"{r['speculative_identical_rows']:11.0%}",
            f"{r['hf_identical_rows']:9.0%}" if hf else f"{'-':>9s}",
        ]
        print(" ".join(cells))
    if opts.sampling:
        for r in results:
            print(
                f"sampling at T={opts.temperature}, batch {r['batch_size']}: spec-sample / sample "
                f"{r['spec_sample_over_sample']:.2f}x, {r['sampling_tokens_per_forward']:.2f} tokens/forward, "
                f"acceptance {r['sampling_acceptance']:.3f}"
            )
    if opts.json:
        opts.json.write_text(
            json.dumps(
                {
                    "model": label,
                    "prompts_from": source,
                    "device": device.type,
                    "dtype": dtype_name,
                    "results": results,
                },
                indent=2,
                default=str,
            )
            + "\n"
        )
    tmp_dir.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
