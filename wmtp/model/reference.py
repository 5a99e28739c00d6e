"""Reference language models for Rho-1: our own model class, or a Hugging Face causal LM (extra `hf`).

A reference must share the policy's tokenizer: Rho-1 compares the two models' losses token by token,
so a reference with another vocabulary either indexes out of range (smaller) or scores other tokens
(larger, or the same size with other pieces). `check_reference_fits` refuses that before any weight
is read: `check_inputs` calls it before a run dir exists, and `load_reference_model(..., policy=…)`
again before loading (for `python -m wmtp.train` and direct callers).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from wmtp.errors import CheckpointError, WmtpError

KEY = "rho1.reference"
HF_EXTRA = f"{KEY}: hf: references need the `hf` extra (pip install 'weighted-mtp[hf]')"
# Encoded by both tokenizers of an `hf:` reference: code, indentation, digits, non-ASCII (byte fallback).
PROBE_TEXT = 'def mean(xs: list[float]) -> float:\n    """Average of 12 values — ok."""\n    return sum(xs) / len(xs)\n'
# Where our model dirs keep params and tokenizer (standard layout first, then a Meta release dir);
# the same places `load_model` and `load_tokenizer` read, without importing torch-heavy modules.
PARAMS_CANDIDATES = ("configs/params.json", "params.json")
TOKENIZER_CANDIDATES = ("tokenizer/tokenizer.model", "tokenizer.model")
MUST_SHARE = "; a reference must share the policy's tokenizer"


class HFCausalLM(nn.Module):
    """Wrap a transformers causal LM so `forward(tokens)` returns logits `[B, S, V]`."""

    def __init__(self, hf_model):
        super().__init__()
        self.hf_model = hf_model

    def forward(self, tokens_BS: torch.Tensor) -> torch.Tensor:
        return self.hf_model(input_ids=tokens_BS).logits.float()


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def model_dir_vocab_size(model_dir: Path) -> int:
    """`vocab_size` of our model dir's params.json (no weights read)."""
    from wmtp.model.args import ModelArgs

    for rel in PARAMS_CANDIDATES:
        if (model_dir / rel).is_file():
            return ModelArgs.from_json_file(model_dir / rel).vocab_size
    raise CheckpointError(f"{model_dir}: no {PARAMS_CANDIDATES[0]} or {PARAMS_CANDIDATES[1]}; not a model dir")


def model_dir_tokenizer(model_dir: Path) -> Optional[Path]:
    """The SentencePiece model of our model dir, or None when it ships none."""
    return next((model_dir / rel for rel in TOKENIZER_CANDIDATES if (model_dir / rel).is_file()), None)


def check_reference_fits(policy: str | os.PathLike, reference: str) -> None:
    """Refuse a Rho-1 reference whose vocabulary or tokenizer differs from the policy's: one line naming both.

    Our model class: `vocab_size` of both params.json, then the SHA-256 of both tokenizer.model files.
    `hf:<name or path>`: the config's `vocab_size` (AutoConfig), then the ids AutoTokenizer gives a fixed
    probe text against our tokenizer's (local files only). Only these small files are read, no weights.
    When either side ships no tokenizer, the vocab size is all that can be checked (the trainer needs
    the policy's tokenizer anyway and says so when it is missing).
    """
    policy_dir = Path(policy)
    policy_vocab = model_dir_vocab_size(policy_dir)
    if reference.startswith("hf:"):
        ref_vocab, ref_ids = hf_vocab_and_probe_ids(reference[3:])
    else:
        ref_vocab, ref_ids = model_dir_vocab_size(Path(reference)), None
    if ref_vocab is not None and ref_vocab != policy_vocab:
        raise WmtpError(
            f"{KEY}: {reference} has vocab {ref_vocab} but the policy {policy} has {policy_vocab}{MUST_SHARE}"
        )
    policy_tok = model_dir_tokenizer(policy_dir)
    if policy_tok is None:
        return
    if reference.startswith("hf:"):
        from wmtp.model.tokenizer import Tokenizer

        if ref_ids is not None and ref_ids != Tokenizer(policy_tok).encode(PROBE_TEXT):
            raise WmtpError(
                f"{KEY}: {reference}'s tokenizer encodes a probe text to other ids than the policy "
                f"{policy}'s {policy_tok.name}{MUST_SHARE}"
            )
        return
    ref_tok = model_dir_tokenizer(Path(reference))
    if ref_tok is None:
        return
    from wmtp.model.checkpoint import sha256_file

    policy_hash, ref_hash = sha256_file(policy_tok), sha256_file(ref_tok)
    if ref_hash != policy_hash:
        raise WmtpError(
            f"{KEY}: {reference} has another tokenizer (tokenizer.model SHA-256 {ref_hash[:12]}…) "
            f"than the policy {policy} ({policy_hash[:12]}…){MUST_SHARE}"
        )


def hf_vocab_and_probe_ids(name: str) -> tuple[Optional[int], Optional[list[int]]]:
    """(config vocab_size, probe text ids) of a local Hugging Face model; None where it records none."""
    try:
        from transformers import AutoConfig, AutoTokenizer
    except ImportError:
        raise WmtpError(HF_EXTRA) from None
    try:
        config = AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise WmtpError(f"{KEY}: cannot load {name!r} ({one_line(exc)})") from None
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    vocab = getattr(text_config, "vocab_size", None)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
    except Exception:  # no tokenizer files (transformers raises OSError, ValueError, …): vocab size only
        return vocab, None
    return vocab, list(tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"])


def load_reference_model(reference: str, device, policy: Optional[str | os.PathLike] = None) -> nn.Module:
    """`hf:<name or path>` → transformers AutoModelForCausalLM (local files only); else our model dir.

    With `policy` (the policy's model dir), `check_reference_fits` first: nothing is loaded for a
    reference with another vocabulary or tokenizer.
    """
    if policy is not None:
        check_reference_fits(policy, reference)
    if reference.startswith("hf:"):
        try:
            from transformers import AutoModelForCausalLM
        except ImportError:
            raise WmtpError(HF_EXTRA) from None
        try:
            hf_model = AutoModelForCausalLM.from_pretrained(reference[3:], local_files_only=True)
        except OSError as exc:
            raise WmtpError(f"{KEY}: cannot load {reference[3:]!r} ({one_line(exc)})") from None
        return HFCausalLM(hf_model).to(device)
    from wmtp.model import load_model

    return load_model(reference, device=device, dtype="float32")
