"""SentencePiece tokenizer wrapper with explicit bos / eos / pad ids, and local training."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterable

import sentencepiece as spm

from wmtp.errors import CheckpointError


class Tokenizer:
    """Encode/decode with a SentencePiece model.

    `pad_id` is the model's pad piece when it has one; LLaMA's tokenizer has none (pad = −1), so
    padding then uses `eos_id` — padded positions are always masked out of the loss anyway.
    """

    def __init__(self, model_path: str | os.PathLike):
        path = Path(model_path)
        if not path.is_file():
            raise CheckpointError(f"{path}: tokenizer model not found")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(path))
        except (OSError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: not a SentencePiece model ({exc})") from None
        self.path = path
        self.bos_id: int = self.sp.bos_id()
        self.eos_id: int = self.sp.eos_id()
        self.pad_id: int = self.sp.pad_id() if self.sp.pad_id() >= 0 else self.eos_id

    @property
    def vocab_size(self) -> int:
        return self.sp.vocab_size()

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self.sp.encode(text)
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids: Iterable[int]) -> str:
        specials = {self.bos_id, self.eos_id, self.pad_id}
        return self.sp.decode([int(i) for i in ids if int(i) not in specials])


def load_tokenizer(model_dir: str | os.PathLike) -> Tokenizer:
    """The tokenizer of a standard model directory (`tokenizer/tokenizer.model`) or a Meta release."""
    model_dir = Path(model_dir)
    for candidate in (model_dir / "tokenizer" / "tokenizer.model", model_dir / "tokenizer.model"):
        if candidate.is_file():
            return Tokenizer(candidate)
    raise CheckpointError(f"{model_dir}: no tokenizer (expected tokenizer/tokenizer.model)")


def train_sentencepiece(texts: Iterable[str], out_file: Path, vocab_size: int) -> Path:
    """Train a BPE SentencePiece model on `texts`; byte fallback so any code text round-trips.

    Deterministic for the same texts (one thread). Ids: unk=0, bos=1, eos=2, pad=3.
    """
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)),
        model_writer=buffer,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        num_threads=1,
        max_sentence_length=1 << 16,
        minloglevel=2,
    )
    out_file.write_bytes(buffer.getvalue())
    return out_file
