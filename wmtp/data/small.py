"""Small splits for laptop runs: `train_small.jsonl` (≤ 100 rows) and `valid_small.jsonl` (≤ 32) beside
the full splits, picked by a spec with `data.split_variant: small`.

The rows are drawn so that every sampling strategy still finds what it needs (`draw_small`): half
correct and half incorrect (the critic's `balanced` draw can take them all, `correct_only` the correct
half) and, within each half, the difficulty bins of the default curriculum in their average shares over
its schedule (the verifiable stage's `curriculum` draw fits). A bin short of rows leaves its place to
the others, and rows in no bin (difficulty 0 in a dataset without difficulties, Codeforces 12+) fill
what the bins cannot. Lines are copied byte for byte in file order and indexed like any split (token
counts taken from the full index); the metadata names the file, the seed and the rule they came from.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np

from wmtp.common.files import atomic_output
from wmtp.data.index import DatasetIndex, index_path, metadata_path, write_index
from wmtp.data.sampling import SamplingSpec, apportion, bin_pools, schedule_shares
from wmtp.data.schema import DataError, parse_line

SMALL_ROWS = {"train": 100, "valid": 32}  # rows of each small split (fewer when the full split is smaller)
RULE = "half correct, half incorrect; each half over the default curriculum bins in their schedule shares"


def small_path(jsonl_path: str | Path) -> Path:
    """`…/train.jsonl` → `…/train_small.jsonl`."""
    path = Path(jsonl_path)
    return path.with_name(f"{path.stem}_small{path.suffix}")


def fill(total: int, weights: list[float], sizes: np.ndarray) -> np.ndarray:
    """How many of `total` rows to take from pools of `sizes`: in proportion to `weights` as far as the
    pools allow, then from whichever pools still have rows (in proportion to what they hold)."""
    counts = np.zeros(len(sizes), dtype=np.int64)
    for shares in (np.asarray(weights, dtype=np.float64), sizes.astype(np.float64)):
        while counts.sum() < total:
            room = sizes - counts
            active = np.where(room > 0, shares, 0.0)
            if active.sum() == 0:
                break
            counts += np.minimum(apportion(int(total - counts.sum()), active.tolist()), room)
    return counts


def label_quotas(total: int, n_correct: int, n_incorrect: int) -> tuple[int, int]:
    """(correct, incorrect) rows of a `total`-row draw: half each, a label short of rows leaving the rest
    to the other."""
    half = apportion(total, [1, 1])[0]
    correct = min(n_correct, max(half, total - n_incorrect))
    return correct, total - correct


def draw_small(index: DatasetIndex, n_rows: int, seed: int = 0, spec: Optional[SamplingSpec] = None) -> np.ndarray:
    """Row numbers (sorted) of a small split of `index`: `min(n_rows, len(index))` rows, see the module doc."""
    spec = spec or SamplingSpec(strategy="curriculum")
    rng = np.random.default_rng(seed)
    bins = bin_pools(index, spec)
    outside = np.ones(len(index), dtype=bool)
    for pool in bins:
        outside[pool] = False
    pools = [*bins, np.flatnonzero(outside)]  # the last pool: rows in no bin, only to fill up
    weights = [*schedule_shares(spec).tolist(), 0.0]
    correct = index.is_correct.astype(bool)
    quotas = label_quotas(min(n_rows, len(index)), int(correct.sum()), int((~correct).sum()))
    chosen = []
    for label, quota in zip((True, False), quotas):
        mine = [rng.permutation(pool[correct[pool] == label]) for pool in pools]
        counts = fill(quota, weights, np.array([len(pool) for pool in mine]))
        chosen += [pool[:count] for pool, count in zip(mine, counts)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def write_small_split(jsonl_path: str | Path, n_rows: int, seed: int = 0) -> DatasetIndex:
    """Write `<stem>_small.jsonl` (+ index + metadata) beside `jsonl_path` from `draw_small`'s rows."""
    jsonl_path = Path(jsonl_path)
    full = DatasetIndex.load(jsonl_path)
    rows = draw_small(full, n_rows, seed)
    out = small_path(jsonl_path)
    picked = full.rows[rows].copy()
    digest, sources, offset = hashlib.sha256(), Counter(), 0
    for stale in (index_path(out), metadata_path(out)):  # never a new file paired with an old index
        if stale.exists():
            os.unlink(stale)
    with open(jsonl_path, "rb") as source, atomic_output(out) as target:
        for i, row in enumerate(rows):
            source.seek(int(full.offsets[row]))
            line = source.read(int(full.lengths[row]))
            sources[parse_line(line, jsonl_path, int(row) + 1)["metadata"]["source"]] += 1
            line = line if line.endswith(b"\n") else line + b"\n"  # the full file's last line may lack one
            target.write(line)
            digest.update(line)
            picked["offset"][i], picked["length"][i] = offset, len(line)
            offset += len(line)
    extra = {
        "small": {
            "of": jsonl_path.name,
            "of_sha256": full.metadata.get("jsonl_sha256"),
            "rows_requested": n_rows,
            "seed": seed,
            "rule": RULE,
        }
    }
    tokens = full.metadata.get("tokens")
    if isinstance(tokens, dict):  # the counts come from the full index: same tokenizer
        counts = picked["n_tokens"].astype(np.int64)
        extra["tokens"] = {
            "tokenizer": tokens.get("tokenizer"),
            "total": int(counts.sum()),
            "max": int(counts.max(initial=0)),
            "mean": round(float(counts.mean()), 2) if len(counts) else 0.0,
        }
    return write_index(out, picked, sources, digest.hexdigest(), None, extra)


def split_dir_of(path: str | Path) -> Path:
    """The folder holding `train.jsonl`: `path` itself, or its `processed/` (a `wmtp data prepare --out`)."""
    path = Path(path)
    if not (path / "train.jsonl").is_file() and (path / "processed" / "train.jsonl").is_file():
        return path / "processed"
    return path


def write_small_splits(split_dir: str | Path, seed: int = 0) -> dict[str, DatasetIndex]:
    """`train_small` and (when `valid.jsonl` exists) `valid_small` of a prepared split folder."""
    split_dir = split_dir_of(split_dir)
    if not (split_dir / "train.jsonl").is_file():
        raise DataError(
            f"{split_dir}: no train.jsonl (expected a prepared split folder, e.g. storage/datasets_v2/smoke/processed)"
        )
    return {
        split: write_small_split(split_dir / f"{split}.jsonl", n_rows, seed)
        for split, n_rows in SMALL_ROWS.items()
        if (split_dir / f"{split}.jsonl").is_file()
    }
