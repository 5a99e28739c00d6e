"""Run every stage of an experiment in one run dir (what `python -m wmtp.train` and `wmtp train` call).

    <run_dir>/<stage>/spec.yaml  checkpoints/{step_*,best,final}  plots/
A later stage finds an earlier one's final checkpoint (the verifiable stage loads the critic's value
head from it). A run dir that already holds checkpoints is resumed: finished stages are skipped. Its
stages must be asked for with the spec they were started with (`wmtp.train.resume.check_run_dir`).

A stage with an `eval:` block is evaluated on its final checkpoint by rank 0 (`<stage>/eval/samples.jsonl`
and `summary.json`; pass@k also logged to the stage's MLflow run): right after the stage in a single
process, after the last stage when distributed (the other ranks then leave instead of waiting in a
collective for as long as generation takes). A finished stage whose evaluation is missing is
evaluated when the run dir is run again.

MLflow (rank 0): the job, one run dir, is one run named after the run dir (`job_tracker`), and each
stage's run, named `<run dir name>/<stage>`, is nested under it.
"""

from __future__ import annotations

import datetime as _dt
import sys
from pathlib import Path
from typing import Optional

from wmtp.distributed import DistContext, broadcast_object, destroy_distributed, init_distributed
from wmtp.train.checkpointing import TRAIN_STATE
from wmtp.train.config import Experiment, SpecError, StageSpec, check_world_size
from wmtp.train.loop import Preemption, StageResult, train_stage
from wmtp.train.resume import check_run_dir


def default_run_dir(experiment: Experiment) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(experiment.stages[0].output.root) / f"{experiment.name}-{stamp}"


def stage_is_finished(stage_dir: Path) -> bool:
    return (stage_dir / "checkpoints" / "final" / TRAIN_STATE).is_file()


def input_paths(spec: StageSpec) -> list[tuple[str, str, str]]:
    """(key, path, what it should be) of every file or dir the stage reads, in the order it reads them: the
    model and data, then what its objective declares (`Objective.input_paths`), then the evaluation's files."""
    small = spec.data.split_variant == "small"
    prepared = f"a prepared JSONL (wmtp data prepare{', then wmtp data small DIR' if small else ''})"
    paths = [
        ("model.path", spec.model.path, "a model dir (wmtp model convert-meta / micro)"),
        ("data.train", spec.data.train_file, prepared),
    ]
    if spec.data.valid_file:
        paths.append(("data.valid", spec.data.valid_file, prepared))
    paths += [(p.key, p.path, p.expected) for p in spec.objective_class.input_paths(spec)]
    if spec.eval is not None and spec.eval.data:
        paths.append(
            ("eval.data", spec.eval.data, f"the {spec.eval.benchmark} file to evaluate the final checkpoint on")
        )
    if spec.eval is not None and spec.eval.mbpp_data:
        paths.append(("eval.mbpp_data", spec.eval.mbpp_data, "the MBPP file to evaluate the final checkpoint on"))
    return paths


def check_inputs(experiment: Experiment, world_size: int = 1) -> None:
    """Refuse a missing input path before anything starts: no run dir, no torchrun, no hours lost.

    One line naming the stage, the key and the path (`wmtp train` prints it and exits 2, before it
    would launch torchrun, so it is printed once rather than by every rank). Then, once every path
    exists, the objective's own checks of them (`Objective.check_inputs`: a Rho-1 reference must fit
    its policy, same vocab size and tokenizer; params, config and tokenizer files only, no weights, see
    `check_reference_fits`). Last, validation must give each of the `world_size` ranks a full batch
    (`check_world_size`).
    """
    from wmtp.errors import WmtpError

    for spec in experiment.stages:
        for key, path, expected in input_paths(spec):
            if not Path(path).exists():
                raise SpecError(f"stage {spec.stage}: {key}: {path} does not exist (expected {expected})")
    for spec in experiment.stages:
        try:
            spec.objective_class.check_inputs(spec)
        except WmtpError as exc:
            raise SpecError(f"stage {spec.stage}: {exc}") from None
    check_world_size(experiment, world_size)


def stage_needs(spec: StageSpec) -> Optional[str]:
    """The earlier stage whose final checkpoint `spec` loads (`Objective.needs_stage`: the critic's value
    head for verifiable), or None."""
    return spec.objective_class.needs_stage(spec)


def check_stage_needs(experiment: Experiment, run_dir: Path) -> None:
    """Refuse a stage whose input stage neither runs before it nor has finished in `run_dir`.

    Read-only, so it runs before the run dir or any stage dir is made (`--stage verifiable` alone).
    """
    earlier: set[str] = set()
    for spec in experiment.stages:
        needed = stage_needs(spec)
        if needed and needed not in earlier and not stage_is_finished(run_dir / needed):
            instead = spec.objective_class.instead_of_stage
            raise SpecError(
                f"stage {spec.stage} needs the final checkpoint of stage {needed} in "
                f"{run_dir / needed} (run --stage {needed} first)" + (f" or {instead}" if instead else "")
            )
        earlier.add(spec.stage)


def hold_run_lock(run_dir: Path, ctx: DistContext):
    """Rank 0 takes the run dir's lock (unless its launcher holds it); every rank raises if it is busy."""
    from wmtp.train.run_lock import RunDirBusy, hold

    lock, busy = None, None
    if ctx.is_main:
        try:
            lock = hold(run_dir)
        except RunDirBusy as exc:
            busy = str(exc)
    busy = broadcast_object(busy, ctx)  # the other ranks must not start waiting in the first collective
    if busy is not None:
        raise RunDirBusy(busy)
    return lock


def run_experiment(experiment: Experiment, run_dir: Optional[Path], ctx: DistContext) -> list[StageResult]:
    """Train the stages in order; stop after a preempted stage (its rerun resumes it).

    `experiment` may be a subset of its stages (`--stage`): a stage whose input stage is not among them
    loads that stage's final checkpoint from `run_dir`. The run dir has one writer: rank 0 holds its
    lock (`wmtp.train.run_lock`) until the stages and their evaluations are done.
    """
    check_inputs(experiment, ctx.world_size)
    run_dir = Path(broadcast_object(str(run_dir or default_run_dir(experiment)), ctx))
    check_stage_needs(experiment, run_dir)
    check_run_dir(experiment, run_dir)  # every stage, finished ones too, before any of them trains
    lock = hold_run_lock(run_dir, ctx)
    try:
        job = job_tracker(experiment, run_dir, ctx)
        status = "FAILED"
        try:
            results = run_stages(experiment, run_dir, ctx, job)
            status = "KILLED" if any(r.preempted for r in results) else "FINISHED"
            return results
        finally:
            job.close(status)
    finally:
        if lock is not None:
            lock.release()


def job_tracker(experiment: Experiment, run_dir: Path, ctx: DistContext):
    """The job's MLflow run (rank 0; a NullTracker elsewhere), at the first stage's tracking URI and
    experiment, named after the run dir; a resumed job reopens it (`<run_dir>/mlflow_job_run_id`). It ends
    as its stages do: FINISHED, KILLED when one was preempted, FAILED when one raised."""
    from wmtp.tracking import make_job_tracker

    tracking = experiment.stages[0].tracking
    tags = {"job": run_dir.resolve().name, "experiment": experiment.name, "run_dir": str(run_dir.resolve())}
    return make_job_tracker(ctx.is_main, tracking.uri, tracking.experiment, run_dir, tags)


def run_stages(experiment: Experiment, run_dir: Path, ctx: DistContext, job=None) -> list[StageResult]:
    """The stages of `run_experiment`, in the locked run dir; their MLflow runs nest under `job`'s."""
    earlier: dict[str, Path] = {}
    results = []
    to_evaluate: list[tuple[StageSpec, Path]] = []
    for spec in experiment.stages:
        stage_dir = run_dir / spec.stage
        final = stage_dir / "checkpoints" / "final"
        needed = stage_needs(spec)
        if needed and needed not in earlier:  # a stage run alone: its input stage finished in an earlier run
            earlier[needed] = run_dir / needed / "checkpoints" / "final"
        if stage_is_finished(stage_dir):
            if ctx.is_main:
                print(f"{spec.stage}: already finished in {stage_dir}, skipping")
            earlier[spec.stage] = final
            if spec.eval is not None and not (stage_dir / "eval" / "summary.json").is_file():
                to_evaluate.append((spec, stage_dir))
            continue
        result = train_stage(spec, stage_dir, ctx, earlier, parent=job)
        results.append(result)
        if result.preempted:
            return results  # exit promptly: the rerun resumes this stage (and evaluates what is pending)
        earlier[spec.stage] = result.final
        if ctx.is_main:
            print(
                f"{spec.stage}: {result.steps} steps, final checkpoint {result.final}"
                + (" (stopped early)" if result.stopped_early else "")
            )
        if spec.eval is not None:
            to_evaluate.append((spec, stage_dir))
        if not ctx.is_distributed:
            evaluate_stages(to_evaluate, ctx)
    if ctx.is_distributed:
        # Every rank is done with the stages (rank 0's plots and tracker included) before any leaves:
        # a gloo rank that tore down its group while its peer was still finishing aborted the job
        # ("terminate called without an active exception", SIGABRT) after a successful run.
        import torch.distributed as dist

        dist.barrier()
    evaluate_stages(to_evaluate, ctx)
    return results


def evaluate_stages(pending: list[tuple[StageSpec, Path]], ctx: DistContext) -> None:
    """Evaluate (rank 0) and empty `pending`."""
    while pending:
        spec, stage_dir = pending.pop(0)
        if ctx.is_main:
            evaluate_stage(spec, stage_dir)


def evaluate_stage(spec: StageSpec, stage_dir: Path) -> Optional[dict]:
    """Run the stage's `eval:` on its final checkpoint into `<stage_dir>/eval/`; returns the summary.

    With `eval.mbpp_data` (and a benchmark other than MBPP) MBPP is evaluated as well, with the same
    options, into `<stage_dir>/eval/mbpp/`; `<stage_dir>/eval/summary.json` stays the first benchmark's
    (what `wmtp compare` reads). A bad evaluation input (e.g. a missing MBPP file) is reported and
    skipped: the trained checkpoints stay valid and `wmtp eval run <stage_dir>` can evaluate them later.
    """
    from wmtp.errors import WmtpError
    from wmtp.eval.options import EvalOptions
    from wmtp.eval.runner import evaluate

    cfg = spec.eval
    options = EvalOptions(**cfg.model_dump(include=set(EvalOptions.model_fields)))  # the block less its files
    run_id = stage_run_id(spec, stage_dir)
    runs = [(cfg.benchmark, cfg.data, stage_dir / "eval")]
    if cfg.mbpp_data and cfg.benchmark != "mbpp":
        runs.append(("mbpp", cfg.mbpp_data, stage_dir / "eval" / "mbpp"))
    first = None
    for benchmark, data, out_dir in runs:
        try:
            result = evaluate(
                stage_dir / "checkpoints" / "final",
                benchmark,
                options,
                out_dir=out_dir,
                data=data,
                seed=spec.train.seed,
                device=spec.train.device,
                progress=False,
                mlflow=run_id is not None,
                mlflow_run_id=run_id,
                tracking_uri=spec.tracking.uri,
            )
        except WmtpError as exc:
            print(f"{spec.stage}: {benchmark} evaluation skipped: {exc}", file=sys.stderr)
            continue
        s = result.summary
        passes = ", ".join(
            f"{k} {v:.4f} (95% CI {s['ci95'][k][0]:.4f}–{s['ci95'][k][1]:.4f})"
            for k, v in s.items()
            if k.startswith("pass@")
        )
        print(
            f"{spec.stage}: {benchmark} {passes}, exact match {s['exact_match']:.4f} "
            f"({s['n_tasks']} problems), {result.summary_path}"
        )
        first = first or s
    return first


def stage_run_id(spec: StageSpec, stage_dir: Path) -> Optional[str]:
    """This stage's MLflow run: the id the tracker kept in the stage dir, else the latest run tagged
    with the stage's run dir by the training loop, or None."""
    from wmtp.tracking import RUN_ID_FILE, read_run_id

    saved = read_run_id(stage_dir / RUN_ID_FILE)
    if saved is not None:
        return saved
    try:
        from mlflow.tracking import MlflowClient

        from wmtp.tracking import resolve_tracking_uri

        client = MlflowClient(tracking_uri=resolve_tracking_uri(spec.tracking.uri))
        experiment = client.get_experiment_by_name(spec.tracking.experiment)
        if experiment is None:
            return None
        run_dir = str(stage_dir.resolve()).replace("'", "\\'")
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.run_dir = '{run_dir}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0].info.run_id if runs else None
    except Exception as exc:  # tracking is best effort: the summary is written either way
        from wmtp.tracking import redact, resolve_tracking_uri

        # MLflow's errors quote the request URL, credentials included: redacted, then cut.
        message = redact(f"{type(exc).__name__}: {exc}", resolve_tracking_uri(spec.tracking.uri))[:200]
        print(f"warning: MLflow run of {spec.stage} not found ({message})", file=sys.stderr)
        return None


def main_process(experiment: Experiment, run_dir: Optional[Path]) -> int:
    """Process entry: join the process group (if torchrun started us), train, leave cleanly."""
    Preemption.install()
    ctx = init_distributed(experiment.stages[0].distributed.backend, experiment.stages[0].train.device)
    try:
        run_experiment(experiment, run_dir, ctx)
    finally:
        destroy_distributed()
    sys.stdout.flush()
    return 0
