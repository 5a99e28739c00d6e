"""Training-step throughput: our `Transformer` vs Hugging Face `LlamaForCausalLM`, eager and compiled.

Contenders (`--models`, each eager and/or with every transformer block compiled, `--compile`):

- `ours`: our `Transformer` with n_future_tokens=1, next-token cross-entropy;
- `hf`: `LlamaForCausalLM` with the same dims and the *same* random weights (ours → HF with the usual
  Meta→HF query/key row permutation, so the init losses must agree: checked before timing);
- `ours-n4`: our `Transformer` with 4 heads (the same number of blocks: `--n-layers` counts trunk and
  heads) trained with the memory-efficient MTP loss (`wmtp.model.mtp_loss.mtp_loss_memory_efficient`:
  the heads run forward and backward one at a time), as the experiments train.

A step is forward, loss, backward (and, with `--optimizer adamw`, an AdamW step: fused on CUDA).
Compiled models compile each transformer block (`wmtp.distributed.compile_blocks` for ours, the same
per-layer `torch.compile` for HF's decoder layers), as torchtitan does. Steps are interleaved, the
order rotating every repetition, so that noise from a shared machine hits all alike; the table
reports medians, tokens/s, model TFLOP/s (wmtp.train.flops: 6N + attention, each head counted) and,
on a GPU with a known peak, MFU and peak memory.

`--budget-s` bounds the whole run (build, compilation, warm-up, timed steps): timed repetitions stop
once it is spent (at least `--min-reps` run), so the GPU run below fits the device tool's 5 minutes.

    .venv/bin/python bench/model_throughput.py                 # ~1-2 min on 2 CPU cores
    .venv/bin/python bench/model_throughput.py --compile both --dim 256 --n-layers 4 --seq 128 --batch 2
    python bench/model_throughput.py --device cuda --dim 2048 --n-layers 16 --n-heads 16 --seq 2048 \\
        --batch 4 --compile both --budget-s 270                # one H100 / H200 / A100
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from wmtp.distributed import compile_blocks  # noqa: E402
from wmtp.model import ModelArgs, Transformer  # noqa: E402
from wmtp.model.mtp_loss import IGNORE_INDEX, mtp_loss_memory_efficient  # noqa: E402
from wmtp.train.flops import PEAK_BF16_FLOPS, peak_flops, training_flops  # noqa: E402

MODELS = ("ours", "hf", "ours-n4")
COMPILED = ", compiled blocks"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--n-layers", type=int, default=8, help="transformer blocks (trunk + heads)")
    parser.add_argument("--n-heads", type=int, default=8)
    parser.add_argument("--n-kv-heads", type=int, default=None, help="GQA key/value heads (default: n-heads)")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--models", default="ours,hf", help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument(
        "--compile",
        choices=["off", "on", "both"],
        default="off",
        help="each model eager (off), with compiled blocks (on), or both",
    )
    parser.add_argument(
        "--precision",
        choices=["auto", "float32", "autocast", "bfloat16"],
        default="auto",
        help="auto: bf16 autocast over fp32 weights on CUDA (how one GPU / DDP trains), "
        "float32 elsewhere; bfloat16: bf16 weights (the compute of FSDP2's mixed precision)",
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model (compilation happens here)")
    parser.add_argument("--reps", type=int, default=6, help="timed steps per model (at most)")
    parser.add_argument("--min-reps", type=int, default=2, help="timed steps per model even past the budget")
    parser.add_argument("--budget-s", type=float, default=None, help="stop timed steps after this many seconds")
    parser.add_argument("--optimizer", choices=["none", "adamw"], default="none")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    opts = parser.parse_args(argv)
    opts.models = [m.strip() for m in opts.models.split(",") if m.strip()]
    unknown = [m for m in opts.models if m not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {unknown}; expected some of {', '.join(MODELS)}")
    return opts


def model_args(opts: argparse.Namespace, n_future: int) -> ModelArgs:
    return ModelArgs(
        dim=opts.dim,
        n_layers=opts.n_layers,
        n_heads=opts.n_heads,
        n_kv_heads=opts.n_kv_heads,
        vocab_size=opts.vocab,
        n_future_tokens=n_future,
        max_seq_len=opts.seq,
    )


def build_ours(
    opts: argparse.Namespace, device: torch.device, n_future: int = 1, dtype: torch.dtype = torch.float32
) -> Transformer:
    model = Transformer(model_args(opts, n_future))
    model.init_weights(opts.seed)
    return model.to(device=device, dtype=dtype)


def build_hf(args: ModelArgs, device: torch.device, dtype: torch.dtype = torch.float32):
    """`LlamaForCausalLM` with exactly our dims (SwiGLU width, RoPE θ, RMS ε, untied output, SDPA)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.dim,
        intermediate_size=args.ffn_hidden_dim,
        num_hidden_layers=args.n_layers,
        num_attention_heads=args.n_heads,
        num_key_value_heads=args.n_kv_heads,
        max_position_embeddings=args.max_seq_len,
        rms_norm_eps=args.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": args.rope_theta},
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        use_cache=False,
    )
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config).to(device=device, dtype=dtype)


def meta_to_hf_rope_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder q/k rows from Meta's adjacent-pair RoPE to HF's half-split RoPE (HF's conversion script)."""
    out_dim, in_dim = weight.shape
    return weight.view(n_heads, out_dim // n_heads // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


@torch.no_grad()
def copy_weights_to_hf(ours: Transformer, hf) -> None:
    """Give HF the same function as ours, so the two init losses must match (a correctness check)."""
    a = ours.args
    hf.model.embed_tokens.weight.copy_(ours.tok_embeddings.weight)
    hf.model.norm.weight.copy_(ours.norm.weight)
    hf.lm_head.weight.copy_(ours.output.weight)
    for block, layer in zip(ours.layers, hf.model.layers):
        attn, ffn = block.attention, block.feed_forward
        layer.self_attn.q_proj.weight.copy_(meta_to_hf_rope_rows(attn.wq.weight, a.n_heads))
        layer.self_attn.k_proj.weight.copy_(meta_to_hf_rope_rows(attn.wk.weight, a.n_kv_heads))
        layer.self_attn.v_proj.weight.copy_(attn.wv.weight)
        layer.self_attn.o_proj.weight.copy_(attn.wo.weight)
        layer.mlp.gate_proj.weight.copy_(ffn.w1.weight)
        layer.mlp.up_proj.weight.copy_(ffn.w3.weight)
        layer.mlp.down_proj.weight.copy_(ffn.w2.weight)
        layer.input_layernorm.weight.copy_(block.attention_norm.weight)
        layer.post_attention_layernorm.weight.copy_(block.ffn_norm.weight)


def compile_hf_layers(hf) -> None:
    """HF's decoder layers compiled one by one, as `compile_blocks` does ours."""
    for layer in hf.model.layers:
        layer.forward = torch.compile(layer.forward)


def next_token_loss(logits_BSV: torch.Tensor, tokens_BS: torch.Tensor) -> torch.Tensor:
    """Mean CE of position t predicting token t+1 — the same loss code for both n=1 models."""
    vocab = logits_BSV.shape[-1]
    return F.cross_entropy(logits_BSV[:, :-1].reshape(-1, vocab).float(), tokens_BS[:, 1:].reshape(-1))


def mtp_labels(tokens_BS: torch.Tensor, n_heads: int) -> torch.Tensor:
    """`labels[:, t, k]` = token t+k+1, or IGNORE_INDEX past the end."""
    bsz, seq = tokens_BS.shape
    labels = torch.full((bsz, seq, n_heads), IGNORE_INDEX, dtype=torch.long, device=tokens_BS.device)
    for k in range(n_heads):
        labels[:, : seq - k - 1, k] = tokens_BS[:, k + 1 :]
    return labels


class Contender:
    """One model with its loss function, optimizer and collected step times."""

    def __init__(self, name, model, loss_fn, args: ModelArgs, use_adamw: bool, device: torch.device):
        self.name, self.model, self.loss_fn, self.args = name, model.train(), loss_fn, args
        fused = {"fused": True} if device.type == "cuda" else {}
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, **fused) if use_adamw else None
        self.device = device
        self.times: list[float] = []
        self.first_step_s = 0.0  # the first warm-up step: compilation, for a compiled model
        self.peak_gib = 0.0

    def step(self, tokens_BS: torch.Tensor, autocast) -> float:
        """One training step; returns the loss."""
        with autocast():
            loss = self.loss_fn(self.model, tokens_BS)
        if loss.requires_grad:  # backward outside autocast, as the trainer runs it
            loss.backward()
        if self.optimizer is not None:
            self.optimizer.step()
        self.model.zero_grad(set_to_none=True)
        return loss.item()  # .item() also waits for the device, so the step is complete

    def timed_step(self, tokens_BS: torch.Tensor, autocast, record: bool = True) -> float:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        self.step(tokens_BS, autocast)
        elapsed = time.perf_counter() - start
        if self.device.type == "cuda":
            self.peak_gib = max(self.peak_gib, torch.cuda.max_memory_allocated(self.device) / 2**30)
        if record:
            self.times.append(elapsed)
        return elapsed


def ours_n1_step(model: Transformer, tokens_BS: torch.Tensor) -> torch.Tensor:
    return next_token_loss(model(tokens_BS, n_heads=1).squeeze(2), tokens_BS)  # a view: no [B, S, V] copy


def hf_step(model, tokens_BS: torch.Tensor) -> torch.Tensor:
    return next_token_loss(model(input_ids=tokens_BS, use_cache=False).logits, tokens_BS)


def ours_mtp_step(model: Transformer, tokens_BS: torch.Tensor) -> torch.Tensor:
    """The experiments' loss: every head, forward and backward one head at a time (its backward runs
    inside, as in the trainer's objectives; the total it returns is detached)."""
    return mtp_loss_memory_efficient(model, tokens_BS, mtp_labels(tokens_BS, model.n_future_tokens)).total


def precision_of(opts, device: torch.device) -> tuple[torch.dtype, object, str]:
    """(weights dtype, autocast context factory, description)."""
    choice = opts.precision
    if choice == "auto":
        choice = "autocast" if device.type == "cuda" else "float32"
    if choice == "autocast":
        return torch.float32, (lambda: torch.autocast(device.type, dtype=torch.bfloat16)), "fp32 weights, bf16 autocast"
    if choice == "bfloat16":
        return torch.bfloat16, contextlib.nullcontext, "bf16 weights"
    return torch.float32, contextlib.nullcontext, "float32"


def build_model(name: str, opts, device: torch.device, dtype: torch.dtype):
    """(model, step function, label) of one of MODELS, with the seed's weights."""
    if name == "ours":
        return build_ours(opts, device, 1, dtype), ours_n1_step, "ours (n=1)"
    if name == "hf":
        source = build_ours(opts, device, 1, dtype)
        model = build_hf(source.args, device, dtype)
        copy_weights_to_hf(source, model)
        return model, hf_step, "HF LlamaForCausalLM (sdpa)"
    return build_ours(opts, device, 4, dtype), ours_mtp_step, "ours (n=4, memory-efficient loss)"


def build_contenders(opts, device: torch.device) -> list[Contender]:
    """Each model eager and/or compiled; a compiled twin is a copy of the eager model (same weights)."""
    dtype = precision_of(opts, device)[0]
    variants = {"off": [False], "on": [True], "both": [False, True]}[opts.compile]
    adamw = opts.optimizer == "adamw"
    built = {name: build_model(name, opts, device, dtype) for name in opts.models}
    contenders = []
    for compiled in variants:
        for name in opts.models:
            model, fn, label = built[name]
            if compiled:
                model = copy.deepcopy(model) if len(variants) > 1 else model
                compile_hf_layers(model) if name == "hf" else compile_blocks(model)
            args = model_args(opts, 1) if name == "hf" else model.args
            contenders.append(Contender(label + (COMPILED if compiled else ""), model, fn, args, adamw, device))
    return contenders


def check_init_losses(contenders, tokens_BS, vocab: int, autocast, exact: bool) -> None:
    """Same weights ⇒ same next-token loss (ours n=1 / HF, eager / compiled); random init ⇒ ≈ ln V.
    `exact`: float32 throughout (agree to 1e-3); bf16 compute rounds differently in each model (2e-2)."""
    n1 = [c for c in contenders if "n=4" not in c.name]
    if not n1:
        return
    with torch.no_grad(), autocast():
        losses = {}
        for c in n1:
            logits = c.model(input_ids=tokens_BS).logits if "HF" in c.name else c.model(tokens_BS, n_heads=1).squeeze(2)
            losses[c.name] = next_token_loss(logits, tokens_BS).item()
    print("init loss: " + ", ".join(f"{n} {v:.4f}" for n, v in losses.items()) + f" (ln V = {math.log(vocab):.4f})")
    values = list(losses.values())
    tolerance = 1e-3 if exact else 2e-2
    if max(values) - min(values) > tolerance * max(1.0, abs(values[0])) or abs(values[0] - math.log(vocab)) > 0.5:
        raise SystemExit(f"init losses disagree or are far from ln V: {losses}")


def print_table(contenders, opts, device: torch.device) -> None:
    tokens = opts.batch * opts.seq
    peak = peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    print("\n| model | median step (s) | tokens/s | TFLOP/s | MFU | peak mem (GiB) | first step (s) | reps |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    medians = {}
    for c in contenders:
        t = statistics.median(c.times)
        medians[c.name] = t
        flops = training_flops(c.args, tokens, opts.batch * opts.seq**2)
        mfu = f"{flops / t / peak:.1%}" if peak else "–"
        mem = f"{c.peak_gib:.1f}" if device.type == "cuda" else "–"
        print(
            f"| {c.name} | {t:.3f} | {tokens / t:,.0f} | {flops / t / 1e12:.2f} | {mfu} | {mem} | "
            f"{c.first_step_s:.1f} | {len(c.times)} |"
        )
    base = contenders[0]
    print(f"\nratios of tokens/s to {base.name} (medians; paired per-rep median and range):")
    for c in contenders[1:]:
        paired = sorted(b / o for b, o in zip(base.times, c.times))
        print(
            f"  {c.name}: {medians[base.name] / medians[c.name]:.3f}x "
            f"(paired {statistics.median(paired):.3f}x, {paired[0]:.3f}-{paired[-1]:.3f})"
        )
    by_name = {c.name: c for c in contenders}
    pairs = [
        (by_name[c.name.removesuffix(COMPILED)], c)
        for c in contenders
        if c.name.endswith(COMPILED) and c.name.removesuffix(COMPILED) in by_name
    ]
    if pairs:
        print("compiled blocks / eager, tokens/s (medians; paired per-rep median and range):")
    for eager, compiled in pairs:
        paired = sorted(e / c for e, c in zip(eager.times, compiled.times))
        print(
            f"  {eager.name}: {medians[eager.name] / medians[compiled.name]:.3f}x "
            f"(paired {statistics.median(paired):.3f}x, {paired[0]:.3f}-{paired[-1]:.3f})"
        )
    if device.type == "cuda" and peak is None:
        print(
            f"(no MFU: {torch.cuda.get_device_name(device)!r} is not in wmtp.train.flops' table "
            f"{[name for name, _ in PEAK_BF16_FLOPS]})"
        )


def main(argv=None) -> None:
    opts = parse_args(argv)
    start = time.perf_counter()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    device = torch.device(opts.device)
    dtype, autocast, described = precision_of(opts, device)
    contenders = build_contenders(opts, device)
    gen = torch.Generator().manual_seed(opts.seed)
    tokens_BS = torch.randint(0, opts.vocab, (opts.batch, opts.seq), generator=gen).to(device)
    first = contenders[0].model
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(
        f"device {device} ({name}), torch {torch.__version__}, {described}, step = fwd+loss+bwd"
        f"{'+AdamW' if opts.optimizer == 'adamw' else ''}"
    )
    print(
        f"dim {opts.dim}, blocks {opts.n_layers}, heads {opts.n_heads}/{first.args.n_kv_heads} kv, "
        f"ffn {first.args.ffn_hidden_dim}, vocab {opts.vocab}, batch {opts.batch} x seq {opts.seq}, "
        f"{sum(p.numel() for p in first.parameters()) / 1e6:.1f}M params (n=1)"
    )
    check_init_losses(contenders, tokens_BS, opts.vocab, autocast, exact=described == "float32")
    for c in contenders:  # warm-up, one contender at a time: a compiled one compiles here
        c.first_step_s = c.timed_step(tokens_BS, autocast, record=False)
        for _ in range(opts.warmup - 1):
            c.timed_step(tokens_BS, autocast, record=False)
        print(f"warm-up {c.name}: first step {c.first_step_s:.1f} s", flush=True)
    for rep in range(opts.reps):
        spent = time.perf_counter() - start
        if opts.budget_s is not None and rep >= opts.min_reps and spent > opts.budget_s:
            print(f"budget of {opts.budget_s:.0f} s spent after {rep} timed reps ({spent:.0f} s)")
            break
        # Rotate who goes first so that a slow spell on a shared machine does not favour one contender.
        shift = rep % len(contenders)
        for c in contenders[shift:] + contenders[:shift]:
            c.timed_step(tokens_BS, autocast)
    print_table(contenders, opts, device)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
