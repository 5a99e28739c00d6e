"""Writing one prepared split: JSONL + index in one pass, the token budget, and the drop report."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from wmtp.common.files import atomic_output
from wmtp.data.index import IndexBuilder, index_path, metadata_path, write_index
from wmtp.data.template import encode_response, format_prompt


@dataclass
class SplitReport:
    """What one split kept and what it dropped, by reason."""

    path: Path
    kept: int = 0
    n_correct: int = 0
    dropped: Counter = field(default_factory=Counter)

    @property
    def n_incorrect(self) -> int:
        return self.kept - self.n_correct

    def to_dict(self) -> dict:
        return {
            "kept": self.kept,
            "n_correct": self.n_correct,
            "n_incorrect": self.n_incorrect,
            "dropped": dict(sorted(self.dropped.items())),
        }


@dataclass
class PreparationReport:
    """The splits one `prepare_*` call wrote, with every drop counted."""

    source: str
    splits: dict[str, SplitReport] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def total_dropped(self) -> int:
        return sum(sum(s.dropped.values()) for s in self.splits.values())


class TokenBudget:
    """Counts a record's tokens (as the collator builds it) and tells whether it fits `max_tokens`.

    Without a tokenizer nothing is counted and everything fits (the index then holds 0 tokens).
    """

    def __init__(self, tokenizer=None, max_tokens: int | None = None):
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens if tokenizer is not None else None
        # Many solutions share one problem's prompt: encode each prompt once.
        self.prompt_tokens = functools.lru_cache(maxsize=256)(self._prompt_tokens)

    def _prompt_tokens(self, instruction: str, input_text: str) -> int:
        return len(self.tokenizer.encode(format_prompt(instruction, input_text), bos=True, eos=False))

    def count(self, record: dict) -> int:
        if self.tokenizer is None:
            return 0
        return self.prompt_tokens(record["instruction"], record["input"]) + len(
            encode_response(self.tokenizer, record["output"])
        )

    def fits(self, n_tokens: int) -> bool:
        return self.max_tokens is None or n_tokens <= self.max_tokens

    def drop_reason(self) -> str:
        return f"over the token budget (> {self.max_tokens} tokens)"


class SplitWriter:
    """Streams records into `<dir>/<split>.jsonl` and builds its index while writing.

    The JSONL goes to a temp file renamed into place by `commit()`; the old index and metadata are
    removed first, and the new ones written after, so a reader never pairs a new file with an old
    index. Use as a context manager: an exception discards everything written.
    """

    def __init__(self, path: Path, budget: TokenBudget, extra_metadata: dict | None = None):
        self.path = Path(path)
        self.budget = budget
        self.extra_metadata = extra_metadata or {}
        self.report = SplitReport(self.path)
        self.builder = IndexBuilder()
        self.digest = hashlib.sha256()
        self.offset = 0
        self._output = atomic_output(self.path, "wb")
        self._handle = None

    def __enter__(self) -> "SplitWriter":
        self._handle = self._output.__enter__()
        return self

    def add(self, record: dict) -> bool:
        """Write `record` unless it is over the token budget (then count the drop). True if written."""
        n_tokens = self.budget.count(record)
        if not self.budget.fits(n_tokens):
            self.drop(self.budget.drop_reason())
            return False
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        self._handle.write(line)
        self.digest.update(line)
        self.builder.add(self.offset, len(line), record, n_tokens)
        self.offset += len(line)
        self.report.kept += 1
        self.report.n_correct += int(record["is_correct"])
        return True

    def drop(self, reason: str, count: int = 1) -> None:
        self.report.dropped[reason] += count

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._output.__exit__(exc_type, exc, tb)
            return
        for stale in (index_path(self.path), metadata_path(self.path)):
            if stale.exists():
                os.unlink(stale)
        self._output.__exit__(None, None, None)
        metadata = {
            **self.extra_metadata,
            "preparation": {**self.extra_metadata.get("preparation", {}), **self.report.to_dict()},
        }
        write_index(
            self.path,
            self.builder.finish(),
            self.builder.sources,
            self.digest.hexdigest(),
            self.budget.tokenizer,
            metadata,
        )
