"""Training-step throughput: our `Transformer` (n_future_tokens=1) vs Hugging Face `LlamaForCausalLM`.

Both models are built from the same dims, hold the *same* random weights (ours → HF with the usual
Meta→HF query/key row permutation, so the init losses must agree), see the same batch, and run the
same step: forward, next-token cross-entropy, backward (and, with `--optimizer adamw`, an AdamW step).
Steps are interleaved (ours, HF, HF, ours, ...) so that noise from a shared machine hits both alike;
the table reports medians and the ratio ours / HF.

    .venv/bin/python bench/model_throughput.py                 # ~1-2 min on 2 CPU cores
    .venv/bin/python bench/model_throughput.py --device cuda --dim 2048 --n-layers 16 --seq 2048
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from wmtp.model import ModelArgs, Transformer  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--n-layers", type=int, default=8)
    parser.add_argument("--n-heads", type=int, default=8)
    parser.add_argument("--n-kv-heads", type=int, default=None, help="GQA key/value heads (default: n-heads)")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model")
    parser.add_argument("--reps", type=int, default=6, help="timed steps per model")
    parser.add_argument("--optimizer", choices=["none", "adamw"], default="none")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def build_ours(opts: argparse.Namespace, device: torch.device) -> Transformer:
    args = ModelArgs(dim=opts.dim, n_layers=opts.n_layers, n_heads=opts.n_heads, n_kv_heads=opts.n_kv_heads,
                     vocab_size=opts.vocab, n_future_tokens=1, max_seq_len=opts.seq)
    model = Transformer(args)
    model.init_weights(opts.seed)
    return model.to(device)


def build_hf(args: ModelArgs, device: torch.device):
    """`LlamaForCausalLM` with exactly our dims (SwiGLU width, RoPE θ, RMS ε, untied output, SDPA)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=args.vocab_size, hidden_size=args.dim, intermediate_size=args.ffn_hidden_dim,
        num_hidden_layers=args.n_layers, num_attention_heads=args.n_heads,
        num_key_value_heads=args.n_kv_heads, max_position_embeddings=args.max_seq_len,
        rms_norm_eps=args.norm_eps, rope_parameters={"rope_type": "default", "rope_theta": args.rope_theta},
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False, use_cache=False,
    )
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config).to(device)


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


def next_token_loss(logits_BSV: torch.Tensor, tokens_BS: torch.Tensor) -> torch.Tensor:
    """Mean CE of position t predicting token t+1 — the same loss code for both models."""
    vocab = logits_BSV.shape[-1]
    return F.cross_entropy(logits_BSV[:, :-1].reshape(-1, vocab).float(), tokens_BS[:, 1:].reshape(-1))


def ours_logits(model: Transformer, tokens_BS: torch.Tensor) -> torch.Tensor:
    return model(tokens_BS, n_heads=1).squeeze(2)  # a view: no [B, S, V] copy forward or backward


def hf_logits(model, tokens_BS: torch.Tensor) -> torch.Tensor:
    return model(input_ids=tokens_BS, use_cache=False).logits


class Contender:
    """One model with its logits function, optimizer and collected step times."""

    def __init__(self, name, model, logits_fn, use_adamw: bool):
        self.name, self.model, self.logits_fn = name, model.train(), logits_fn
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4) if use_adamw else None
        self.times: list[float] = []

    def step(self, tokens_BS: torch.Tensor, autocast) -> float:
        """One training step; returns the loss."""
        with autocast():
            loss = next_token_loss(self.logits_fn(self.model, tokens_BS), tokens_BS)
        loss.backward()
        if self.optimizer is not None:
            self.optimizer.step()
        self.model.zero_grad(set_to_none=True)
        return loss.item()  # .item() also waits for the device, so the step is complete

    def timed_step(self, tokens_BS: torch.Tensor, autocast) -> None:
        start = time.perf_counter()
        self.step(tokens_BS, autocast)
        self.times.append(time.perf_counter() - start)


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA (how we train on GPUs); plain float32 elsewhere."""
    if device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def check_init_losses(contenders, tokens_BS, vocab: int) -> None:
    """Same weights ⇒ same loss; random init ⇒ both ≈ ln V. Fail loudly otherwise."""
    with torch.no_grad():
        losses = {c.name: next_token_loss(c.logits_fn(c.model, tokens_BS), tokens_BS).item() for c in contenders}
    print("init loss: " + ", ".join(f"{n} {v:.4f}" for n, v in losses.items()) + f" (ln V = {math.log(vocab):.4f})")
    values = list(losses.values())
    if max(values) - min(values) > 1e-3 or abs(values[0] - math.log(vocab)) > 0.5:
        raise SystemExit(f"init losses disagree or are far from ln V: {losses}")


def print_table(contenders, tokens_per_step: int) -> None:
    ours, hf = contenders
    rows = [(c.name, statistics.median(c.times)) for c in contenders]
    print(f"\n| model | median step (s) | tokens/s |\n|---|---:|---:|")
    for name, t in rows:
        print(f"| {name} | {t:.3f} | {tokens_per_step / t:,.0f} |")
    paired = sorted(h / o for o, h in zip(ours.times, hf.times))  # per-repetition speed ratio
    print(f"\nours / HF tokens/s (ratio of medians): {rows[1][1] / rows[0][1]:.3f}x")
    print(f"paired per-rep ratios: median {statistics.median(paired):.3f}x, "
          f"range {paired[0]:.3f}-{paired[-1]:.3f} over {len(paired)} reps")


def main(argv=None) -> None:
    opts = parse_args(argv)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    device = torch.device(opts.device)
    ours = build_ours(opts, device)
    hf = build_hf(ours.args, device)
    copy_weights_to_hf(ours, hf)
    contenders = [Contender("ours (wmtp Transformer, n_future=1)", ours, ours_logits, opts.optimizer == "adamw"),
                  Contender("HF LlamaForCausalLM (sdpa)", hf, hf_logits, opts.optimizer == "adamw")]
    gen = torch.Generator().manual_seed(opts.seed)
    tokens_BS = torch.randint(0, opts.vocab, (opts.batch, opts.seq), generator=gen).to(device)
    autocast = autocast_for(device)
    n_params = sum(p.numel() for p in ours.parameters())
    print(f"device {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, "
          f"dtype {'bf16 autocast' if device.type == 'cuda' else 'float32'}, step = fwd+bwd"
          f"{'+AdamW' if opts.optimizer == 'adamw' else ''}")
    print(f"dim {opts.dim}, layers {opts.n_layers}, heads {opts.n_heads}/{ours.args.n_kv_heads} kv, "
          f"ffn {ours.args.ffn_hidden_dim}, vocab {opts.vocab}, batch {opts.batch} x seq {opts.seq}, "
          f"{n_params / 1e6:.1f}M params")
    check_init_losses(contenders, tokens_BS, opts.vocab)
    for _ in range(opts.warmup):
        for c in contenders:
            c.step(tokens_BS, autocast)
    for rep in range(opts.reps):
        # Alternate who goes first so a slow spell on the shared machine does not favour one side.
        for c in (contenders if rep % 2 == 0 else contenders[::-1]):
            c.timed_step(tokens_BS, autocast)
    print_table(contenders, opts.batch * opts.seq)


if __name__ == "__main__":
    main()
