"""`wmtp train EXPERIMENT --micro`: any experiment's own stages on the micro model and small splits.

`--micro` applies `jobs/presets/micro.yaml` (micro model, the smoke dataset's small splits, one local
process) and, before the usual input checks, builds what the resolved stages need and a fresh clone
lacks (`build_missing`), saying so in one line each:

- `storage/models_v2/micro-mtp` + `micro-ref` (`wmtp model micro`; seconds),
- `storage/datasets_v2/smoke` (`wmtp data prepare smoke`: every HumanEval test and mutant is run once;
  a minute or two on a laptop),
- `train_small` / `valid_small` beside the splits a stage reads with `data.split_variant: small`
  (`wmtp data small`).

Only those: a path the user pointed elsewhere (`--set model.path=…`) is never built, and a missing one
is refused by `check_inputs` as without `--micro`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Optional

from wmtp.errors import WmtpError
from wmtp.train.config import Experiment, StageSpec

PRESET = "micro"
MICRO_MODELS = ("micro-mtp", "micro-ref")  # built together: they share one tokenizer
SMOKE_DIR = Path("storage/datasets_v2/smoke")
SMOKE_PROBLEMS: Optional[int] = None  # HumanEval problems the smoke dataset is built from (None: all 164)

Log = Callable[[str], None]


def model_dirs(spec: StageSpec) -> list[Path]:
    """The model dirs a stage loads: the policy and those its objective reads (rho1: a local reference)."""
    return [Path(spec.model.path), *(Path(p.path) for p in spec.objective_class.input_paths(spec) if p.model_dir)]


def build_micro_pair(missing: Path, log: Log) -> None:
    """`wmtp model micro --out <parent>` for a missing `micro-mtp` / `micro-ref` (the pair, or neither)."""
    from wmtp.data.humaneval import humaneval_code_texts
    from wmtp.model.micro import build_micro_models

    partner = missing.parent / next(name for name in MICRO_MODELS if name != missing.name)
    if partner.exists():
        raise WmtpError(
            f"{missing} is missing but {partner} exists; they share one tokenizer, so they are "
            f"built together: remove {partner} and run again"
        )
    log(f"--micro: {missing} is missing: building the micro model pair (wmtp model micro --out {missing.parent})")
    build_micro_models(missing.parent, humaneval_code_texts(), log=lambda line: log(f"  {line}"))


def build_smoke(tokenizer_dir: Path, log: Log) -> None:
    """`wmtp data prepare smoke` into SMOKE_DIR, counting tokens with the micro model's tokenizer."""
    from wmtp.data.prepare import prepare_smoke, summary_counts

    log(
        f"--micro: {SMOKE_DIR} is missing: preparing the smoke dataset (wmtp data prepare smoke; runs every "
        "HumanEval test once, a minute or two)"
    )
    report = prepare_smoke(
        SMOKE_DIR,
        tokenizer_dir,
        limit=SMOKE_PROBLEMS,
        workers=min(8, os.cpu_count() or 2),
        show_progress=sys.stderr.isatty(),
    )
    counts = summary_counts(report)
    log(
        f"  kept {counts['kept']} samples ({', '.join(f'{n} {s.kept}' for n, s in report.splits.items())}), "
        f"dropped {counts['dropped']}"
    )


def build_small(spec: StageSpec, log: Log) -> None:
    """`wmtp data small` for the folder of `data.train`."""
    from wmtp.data.small import write_small_splits

    split_dir = Path(spec.data.train).parent
    log(f"--micro: {spec.data.train_file} is missing: writing the small splits (wmtp data small {split_dir})")
    for index in write_small_splits(split_dir).values():
        meta = index.metadata
        log(
            f"  {index.jsonl_path.name}: {meta['n_samples']} rows ({meta['n_correct']} correct, "
            f"{meta['n_incorrect']} incorrect)"
        )


def is_smoke_split(path: Optional[str]) -> bool:
    return path is not None and Path(path).parent == SMOKE_DIR / "processed"


def build_missing(experiment: Experiment, log: Log = print) -> None:
    """Build the micro models, the smoke dataset and the small splits the stages need and lack (in that
    order: the dataset counts tokens with the micro tokenizer, the small splits are drawn from it)."""
    for spec in experiment.stages:
        for path in model_dirs(spec):
            if path.name in MICRO_MODELS and not path.exists():
                build_micro_pair(path, log)
    for spec in experiment.stages:
        full = [spec.data.train, spec.data.valid]
        if any(is_smoke_split(p) and not Path(p).exists() for p in full):
            build_smoke(Path(spec.model.path), log)
    for spec in experiment.stages:
        wanted = [spec.data.train_file, spec.data.valid_file]
        if (
            spec.data.split_variant == "small"
            and Path(spec.data.train).exists()
            and any(p is not None and not Path(p).exists() for p in wanted)
        ):
            build_small(spec, log)
