"""--target skypilot: a SkyPilot task from skypilot/task.yaml.j2, launched as a SkyPilot managed job; status,
logs, cancel and list through the SDK's managed-jobs calls.

The SDK (`pip install 'weighted-mtp[skypilot]'`) is optional. Facts used here, read from skypilot 0.9.2:
- the task YAML's keys and shapes are `sky.utils.schemas.get_task_schema()` (resources, file_mounts storage
  and the task-level `config` checked by their own schemas in `sky.Task.from_yaml_config`); 0.9 has no
  `secrets:` section, so secret names are `envs` with null values, and `Task.from_yaml_config(config,
  env_overrides=[(NAME, value)…])` fills them (a null left unfilled is an error there, as `--env NAME`
  is required by `sky jobs launch`);
- every SDK call goes through an API server (a local one is started on first use) and returns a request
  id: `sky.get(request_id)` waits for the result and raises the request's error, `sky.stream_and_get`
  prints its log meanwhile; `sky.jobs.launch(task, name=)` → (job_id, handle),
  `sky.jobs.queue(refresh=, skip_finished=, all_users=)` → records {job_id, job_name, status
  (ManagedJobStatus), submitted_at (epoch s), recovery_count, …}, `sky.jobs.cancel(name=)` (a name with no
  running job is a message in the request's log, not an error); `sky.jobs.tail_logs(name=, follow=,
  output_stream=)` writes the log from its start (no tail) to the stream and returns an exit code, not a
  request id;
- SKYPILOT_DISABLE_USAGE_COLLECTION=1 turns off its usage reports (read at each call).

A managed job (not a bare `sky.launch` cluster): SkyPilot provisions the nodes, recovers the job on a
preempted spot node (the trainer resumes from its run dir in the bucket) and tears the nodes down at
the end. The task's keys are our template's: the tests validate every render with SkyPilot's own schema
(tests/template_rules.py); a submit checks what the user chose.
"""

from __future__ import annotations

import datetime as _dt
import io
import os
import queue
import re
import threading
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Iterator, Optional

from pydantic import Field

from wmtp.errors import WmtpError
from wmtp_cli.platform.target import JobRow, Target
from wmtp_cli.platform.targets import HttpUrl, ImageRef, PlainName, TargetSettings, matching

if TYPE_CHECKING:
    from wmtp_cli.platform.context import JobContext, RenderedJob

TRACKING_VARIABLE = "MLFLOW_TRACKING_URI"
OWN_NAME_PREFIX = "wmtp-"  # `wmtp ls` lists the managed jobs named like ours (the default job names)
INSTALL_HINT = (
    "the SkyPilot SDK is not installed: pip install 'weighted-mtp[skypilot]' "
    "(`wmtp submit … --dry-run` and `wmtp render` give the task YAML without it)"
)

Accelerator = Annotated[
    str,
    matching(r"[A-Za-z0-9][A-Za-z0-9._-]*", "an accelerator name like H100 or A100-80GB (the count is gpus_per_node)"),
]
CloudName = Annotated[str, matching(r"[a-z][a-z0-9]*", "a SkyPilot cloud name like aws, gcp, azure or kubernetes")]
# No `$`: SkyPilot substitutes the task's envs (secret values included, at launch) into the workdir path.
WorkdirPath = Annotated[
    str, matching(r"[^\x00-\x1f'\"$]+", "a local directory path without quotes, '$' or control characters")
]
BucketUrl = Annotated[
    str,
    matching(
        r"(s3|gs|r2|cos|oci)://[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9._-]+)*/?",
        "a bucket URL like s3://wmtp-storage (s3, gs, r2, cos or oci)",
    ),
]


class SkypilotSettings(TargetSettings):
    """A SkyPilot managed job: `num_nodes` nodes with `gpus_per_node` × `accelerator`, the trainer image,
    the storage bucket mounted at /data/storage."""

    image: ImageRef  # image_id docker:IMAGE: the trainer image (python, torch and the project inside)
    accelerator: Accelerator
    gpus_per_node: int = Field(ge=1)
    num_nodes: int = Field(1, ge=1)
    bucket: BucketUrl  # an existing bucket, mounted read-write (MOUNT mode) at /data/storage
    cloud: Optional[CloudName] = None  # None: SkyPilot picks among the enabled clouds
    region: Optional[PlainName] = None
    use_spot: bool = False  # spot nodes: a preempted job is recovered and resumes from its last checkpoint
    workdir: Optional[WorkdirPath] = (
        None  # a local dir synced to every node, first on PYTHONPATH; None: the image's code
    )
    mlflow_uri: Optional[HttpUrl] = None  # plain MLFLOW_TRACKING_URI; None: taken from the environment at launch


# ---------------------------------------------------------------- the task


def passed_names(context: JobContext) -> list[str]:
    """The variables the task lists by name only (`NAME: null`), filled from this machine at launch:
    env.secrets, and MLFLOW_TRACKING_URI unless targets.skypilot.mlflow_uri gives it."""
    names = list(context.secret_names)
    if not context.settings.get("mlflow_uri") and TRACKING_VARIABLE not in names:
        names.append(TRACKING_VARIABLE)
    return names


def workdir_path(context: JobContext) -> Optional[str]:
    """targets.skypilot.workdir as an absolute path (relative = from the cwd), so the task launches from anywhere."""
    workdir = context.settings.get("workdir")
    return Path(workdir).expanduser().resolve().as_posix() if workdir else None


def choice_problems(context: JobContext) -> list[str]:
    """What the user's settings ask for that cannot run."""
    settings, problems = context.settings, []
    if context.nproc_per_node > settings["gpus_per_node"]:
        problems.append(
            f"distributed.nproc_per_node {context.nproc_per_node} exceeds targets.skypilot.gpus_per_node "
            f"{settings['gpus_per_node']} (one process per GPU)"
        )
    if settings.get("mlflow_uri") and TRACKING_VARIABLE in context.secret_names:
        problems.append(
            f"targets.skypilot.mlflow_uri and {TRACKING_VARIABLE} in env.secrets both set {TRACKING_VARIABLE}; keep one"
        )
    path = workdir_path(context)
    if path and not Path(path).is_dir():
        problems.append(f"targets.skypilot.workdir: {path} is not a directory")
    return problems


def tracking_problem(context: JobContext) -> Optional[str]:
    """Why the trainer would have no MLflow server, or None: without one it writes an sqlite store under
    /data/storage, which is the bucket mount, and sqlite needs the file locking and in-place writes that a
    bucket mount does not give."""
    if context.settings.get("mlflow_uri") or os.environ.get(TRACKING_VARIABLE):
        return None
    if all(uri is not None for uri in context.tracking_uris.values()):
        return None
    return (
        f"no MLflow tracking server for the SkyPilot job: set {TRACKING_VARIABLE} here (environment or "
        "--env-file; passed to the job by name) or targets.skypilot.mlflow_uri=https://…; without one the "
        "trainer would write an sqlite store on the bucket mount, which sqlite cannot use"
    )


# ---------------------------------------------------------------- the SDK


def import_sdk():
    """The `sky` module with its usage reports off (unless the user chose otherwise), or one line saying
    how to get it."""
    os.environ.setdefault("SKYPILOT_DISABLE_USAGE_COLLECTION", "1")  # reports leave this machine: opt out
    try:
        import sky
    except ImportError:
        raise WmtpError(INSTALL_HINT) from None
    return sky


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def describe(exc: BaseException) -> str:
    """An SDK failure on one line: SkyPilot's message without its terminal colours, else its type."""
    return " ".join(ANSI_ESCAPE.sub("", str(exc)).split()) or type(exc).__name__


def call(action: str, function: Callable, *args, **kwargs):
    """One SDK call; its failure is one line saying what could not be done and SkyPilot's reason."""
    try:
        return function(*args, **kwargs)
    except WmtpError:
        raise
    except Exception as exc:  # sky.exceptions.* (not found, API server unreachable, no cloud access …)
        raise WmtpError(f"SkyPilot could not {action}: {describe(exc)}") from None


def launch(job: RenderedJob) -> list[str]:
    """Launch the managed job: the rendered task with the passed names' values from this environment
    (names with no value here are left out and listed); return what to tell the user."""
    context = job.context
    problem = tracking_problem(context)
    if problem:
        raise WmtpError(problem)
    sky = import_sdk()
    names = passed_names(context)
    values = {name: os.environ[name] for name in names if name in os.environ}
    config = {
        **job.document,
        "envs": {key: value for key, value in job.document["envs"].items() if value is not None or key in values},
    }
    task = call("read the task", sky.Task.from_yaml_config, config, env_overrides=list(values.items()))
    request = call("launch the managed job", sky.jobs.launch, task, name=context.name)
    job_id, _ = call("launch the managed job", sky.stream_and_get, request)
    lines = [
        f"launched SkyPilot managed job {context.name} (id {job_id})",
        f"follow it: wmtp status {context.name} --target skypilot ; wmtp logs {context.name} --target skypilot",
    ]
    missing = [name for name in names if name not in values]
    if missing:
        lines.append(f"not set here, so not passed to the job: {', '.join(missing)}")
    return lines


def managed_jobs(sky) -> list[dict]:
    """This user's managed jobs, finished ones included (the jobs controller is not restarted for it)."""
    request = call("list the managed jobs", sky.jobs.queue, refresh=False, skip_finished=False)
    return list(call("list the managed jobs", sky.get, request) or [])


def state(record: dict) -> str:
    """A record's status as SkyPilot prints it (RUNNING, RECOVERING, SUCCEEDED, FAILED…)."""
    status = record.get("status")
    return str(getattr(status, "value", status))


def status(name: str) -> list[str]:
    """`SkyPilot managed job NAME (id N): STATUS` of the newest job of that name."""
    records = [record for record in managed_jobs(import_sdk()) if record.get("job_name") == name]
    if not records:
        raise WmtpError(f"no SkyPilot managed job named {name!r} (`wmtp ls --target skypilot` lists them)")
    record = max(records, key=lambda entry: entry.get("job_id") or 0)
    recoveries = record.get("recovery_count") or 0
    return [
        f"SkyPilot managed job {name} (id {record.get('job_id')}): {state(record)}"
        + (f", recovered {recoveries}×" if recoveries else "")
    ]


def logs(name: str, tail: int, follow: bool) -> Iterator[str]:
    """The job's last `tail` lines; with `follow`, its whole log as it comes, until the job ends
    (SkyPilot 0.9 streams a managed job's log from its start)."""
    sky = import_sdk()
    lines = written_lines(
        lambda stream: call(
            "read the logs of managed job " + repr(name),
            sky.jobs.tail_logs,
            name=name,
            follow=follow,
            output_stream=stream,
        )
    )
    yield from (lines if follow else deque(lines, maxlen=max(tail, 0)))


def written_lines(write: Callable[[io.TextIOBase], Any]) -> Iterator[str]:
    """The lines `write(stream)` writes, as they come: it runs in a thread (the SDK writes a followed log
    until the job ends); its error is raised here, after the lines written before it."""
    chunks: queue.Queue = queue.Queue()
    done = object()

    class Stream(io.TextIOBase):
        def write(self, text: str) -> int:
            chunks.put(text)
            return len(text)

    def run() -> None:
        try:
            write(Stream())
            chunks.put(done)
        except BaseException as exc:  # handed to the reading side, which raises it
            chunks.put(exc)

    threading.Thread(target=run, daemon=True).start()
    pending = ""
    while True:
        chunk = chunks.get()
        if chunk is done:
            break
        if isinstance(chunk, BaseException):
            raise chunk
        *complete, pending = (pending + chunk).split("\n")
        yield from complete
    if pending:
        yield pending


def finished(record: dict) -> bool:
    """Whether a job has ended (SUCCEEDED, CANCELLED, FAILED…): SkyPilot cancels only the others."""
    return state(record) in ("SUCCEEDED", "CANCELLED") or state(record).startswith("FAILED")


def cancel(name: str) -> list[str]:
    """Cancel the managed job: SkyPilot stops it and tears its nodes down. Checked against the queue first:
    SkyPilot answers a name with no running job by a message in its request log, not an error."""
    sky = import_sdk()
    if not any(record.get("job_name") == name and not finished(record) for record in managed_jobs(sky)):
        raise WmtpError(f"no running SkyPilot managed job named {name!r} (`wmtp ls --target skypilot` lists them)")
    request = call(f"cancel managed job {name!r}", sky.jobs.cancel, name=name)
    call(f"cancel managed job {name!r}", sky.get, request)
    return [f"cancelled SkyPilot managed job {name} (SkyPilot tears its nodes down)"]


def list_managed_jobs() -> list[JobRow]:
    """The managed jobs named like ours (`wmtp-…`, the default job names)."""
    rows = []
    for record in managed_jobs(import_sdk()):
        name = str(record.get("job_name") or "")
        if name.startswith(OWN_NAME_PREFIX):
            submitted = record.get("submitted_at")
            created = _dt.datetime.fromtimestamp(submitted, _dt.timezone.utc) if submitted else None
            rows.append(JobRow(name, name, state(record), created))
    return rows


class SkypilotTarget(Target):
    name = "skypilot"
    summary = (
        "a SkyPilot task (`skypilot/task.yaml.j2`) launched as a managed job: `accelerators` "
        "(`targets.skypilot.accelerator`:`gpus_per_node`), `num_nodes`, the trainer image as `image_id`, "
        "the storage bucket mounted at `/data/storage`, secrets as `envs` names filled from this "
        "machine's environment at launch, torchrun's node rank and master address from "
        "`$SKYPILOT_NODE_RANK` / `$SKYPILOT_NODE_IPS` on more nodes; spot nodes recovered (the tests "
        "validate every render with SkyPilot's own task schema)"
    )
    needs = (
        "`pip install 'weighted-mtp[skypilot]'`, cloud credentials SkyPilot can use (`sky check`), an "
        "existing bucket; `MLFLOW_TRACKING_URI` here or `targets.skypilot.mlflow_uri`"
    )
    settings_model = SkypilotSettings
    template = "skypilot/task.yaml.j2"
    env_file_credentials = True  # the secrets' values (and cloud credentials) may live in --env-file

    def extra_context(self, context: JobContext, env_file) -> dict[str, Any]:
        return {"passed_names": passed_names(context), "workdir_path": workdir_path(context)}

    def validate(self, document: Any, manifest: str, context: JobContext) -> None:
        problems = choice_problems(context)
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            raise WmtpError(f"{problems[0]}{more}")

    def submit(self, job: RenderedJob, env_file, server_dry_run: bool) -> tuple[list[str], int]:
        return launch(job), 0

    def status(self, ref: str, settings: dict[str, Any]) -> list[str]:
        return status(ref)

    def logs(self, ref: str, settings: dict[str, Any], tail: int, follow: bool) -> Iterator[str]:
        return logs(ref, tail, follow)

    def cancel(self, ref: str, settings: dict[str, Any]) -> list[str]:
        return cancel(ref)

    def list_jobs(self, settings: dict[str, Any]) -> list[JobRow]:
        return list_managed_jobs()


TARGET = SkypilotTarget()
