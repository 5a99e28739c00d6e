"""Run every stage of an experiment in one run dir (what `python -m wmtp.train` and `wmtp train` call).

    <run_dir>/<stage>/spec.yaml  checkpoints/{step_*,best,final}  plots/
A later stage finds an earlier one's final checkpoint (the verifiable stage loads the critic's value
head from it). A run dir that already holds checkpoints is resumed: finished stages are skipped.
"""

from __future__ import annotations

import datetime as _dt
import sys
from pathlib import Path
from typing import Optional

from wmtp.distributed import DistContext, broadcast_object, destroy_distributed, init_distributed
from wmtp.train.checkpointing import TRAIN_STATE
from wmtp.train.config import Experiment
from wmtp.train.loop import Preemption, StageResult, train_stage


def default_run_dir(experiment: Experiment) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(experiment.stages[0].output.root) / f"{experiment.name}-{stamp}"


def stage_is_finished(stage_dir: Path) -> bool:
    return (stage_dir / "checkpoints" / "final" / TRAIN_STATE).is_file()


def run_experiment(experiment: Experiment, run_dir: Optional[Path], ctx: DistContext) -> list[StageResult]:
    """Train the stages in order; stop after a preempted stage (its rerun resumes it)."""
    run_dir = Path(broadcast_object(str(run_dir or default_run_dir(experiment)), ctx))
    earlier: dict[str, Path] = {}
    results = []
    for spec in experiment.stages:
        stage_dir = run_dir / spec.stage
        final = stage_dir / "checkpoints" / "final"
        if stage_is_finished(stage_dir):
            if ctx.is_main:
                print(f"{spec.stage}: already finished in {stage_dir}, skipping")
            earlier[spec.stage] = final
            continue
        result = train_stage(spec, stage_dir, ctx, earlier)
        results.append(result)
        if result.preempted:
            break
        earlier[spec.stage] = result.final
        if ctx.is_main:
            print(f"{spec.stage}: {result.steps} steps, final checkpoint {result.final}"
                  + (" (stopped early)" if result.stopped_early else ""))
    return results


def main_process(experiment: Experiment, run_dir: Optional[Path]) -> int:
    """Process entry: join the process group (if torchrun started us), train, leave cleanly."""
    Preemption.install()
    ctx = init_distributed(experiment.stages[0].distributed.backend)
    try:
        run_experiment(experiment, run_dir, ctx)
    finally:
        destroy_distributed()
    sys.stdout.flush()
    return 0
