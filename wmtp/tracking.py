"""MLflow tracking on rank 0, resilient to an unreachable, failing or hanging server.

- URI: the spec's `tracking.uri`, else `$MLFLOW_TRACKING_URI`, else a local sqlite store under
  `storage/mlflow/` (the embedded default).
- A failure never stops training: the first one prints a single warning, calls are buffered and
  retried after a back-off that doubles from `retry_initial_s` up to `retry_max_s` (no retry on every
  log call), and at `close()`. Every MLflow HTTP request made here gets a short timeout and no
  retries of MLflow's own (`http_timeout_s`), so a server that accepts but never answers costs at
  most one timeout per back-off interval.
- The buffer holds at most `max_buffer` metric points (oldest dropped first; params, tags, artifacts
  are kept); drops and what was never delivered are reported once, at `close()`.
- With `run_id_path` (the stage dir's `mlflow_run_id`), the run id is written there and a resumed
  stage reopens that run instead of starting a new one.
- One job (a run dir, one `wmtp train`) is one parent run named after the run dir (`make_job_tracker`,
  its id in `<run dir>/mlflow_job_run_id`, so a resumed job reopens it); each stage's run nests under
  it (`parent`: the `mlflow.parentRunId` tag MLflow's UI nests by) and is named `<job>/<stage>`. The
  parent is created when it is first needed, like any run here: an unreachable server delays it, never
  the job; parent and stages share one warning.
- Params are the training settings; the deployment sections of a spec (`targets`, `env`, `output`:
  where and how the job runs, `DEPLOYMENT_SECTIONS`) go to one artifact, `deployment.yaml` (`log_spec`).
- Credentials come from the environment (MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN, AWS_* for
  artifacts) and are never logged: params and deployment.yaml are the resolved spec, which holds
  secret *names* only, and URIs are printed with userinfo and query strings redacted. A URI that
  carries credentials itself (`http://user:pw@host`) is used as given to connect, but params, tags
  and deployment.yaml hold it redacted (`redact_urls`) and MLflow's own "View run … at: URI" line is
  replaced by one without them.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import urlsplit, urlunsplit

from wmtp.common.files import write_text_atomic

# The MLflow experiment training stages (`tracking.experiment`) and evaluations log to unless told otherwise.
# Defined here, where both can import it without loading MLflow (this module imports it lazily).
DEFAULT_EXPERIMENT = "weighted-mtp"
LOCAL_STORE = Path("storage/mlflow")
RUN_ID_FILE = "mlflow_run_id"  # in the stage dir: the MLflow run a resumed stage continues
JOB_RUN_ID_FILE = "mlflow_job_run_id"  # in the run dir: the job's parent run, which a resumed job reopens
# Spec sections that say where and how a job runs, not what it trains: one artifact, not params.
DEPLOYMENT_SECTIONS = ("targets", "env", "output")
DEPLOYMENT_ARTIFACT = "deployment.yaml"


def local_store_uri(root: Path = LOCAL_STORE) -> str:
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def resolve_tracking_uri(configured: Optional[str]) -> str:
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or local_store_uri()


def redact_uri(uri: str) -> str:
    """`https://user:pass@host/p?token=x` → `https://***@host/p?***` (userinfo, query, fragment hidden)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparsable URI>"
    if "@" not in parts.netloc and not parts.query and not parts.fragment:
        return uri  # nothing to hide (and `sqlite:////abs` keeps its slashes)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, netloc, parts.path, "***" if parts.query else "", "***" if parts.fragment else ""))


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redact(text: str, uri: Optional[str] = None) -> str:
    """Every URL in `text` redacted as by `redact_uri`; `uri`'s userinfo, query and fragment wherever
    they still appear (MLflow and requests quote the URL, or its path and query, in their errors)."""
    text = _URL.sub(lambda m: redact_uri(m.group(0)), text)
    if uri and "://" in uri:
        try:
            parts = urlsplit(uri)
        except ValueError:
            return text
        for secret in (parts.netloc.rpartition("@")[0], parts.query, parts.fragment):
            if secret:
                text = text.replace(secret, "***")
    return text


def redact_urls(value: Any) -> Any:
    """A copy of `value` (nested dicts, lists, strings) with every URL in its strings redacted as by
    `redact_uri`: what a spec looks like wherever it is printed or stored (spec.yaml, MLflow params,
    dry runs). The job keeps using the real values; only their shown form changes."""
    if isinstance(value, dict):
        return {key: redact_urls(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_urls(item) for item in value)
    if isinstance(value, str) and "://" in value:
        return redact(value)  # a URL, or text quoting one
    return value


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    """Nested dict → {"a.b.c": "value"} with values as strings (MLflow params)."""
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)[:6000]
    return out


def split_spec(spec: dict) -> tuple[dict, dict]:
    """(training settings, deployment settings) of a spec as `StageSpec.to_dict()` gives it: the
    `DEPLOYMENT_SECTIONS` go to the second, everything else to the first."""
    training = {k: v for k, v in spec.items() if k not in DEPLOYMENT_SECTIONS}
    deployment = {k: spec[k] for k in DEPLOYMENT_SECTIONS if k in spec}
    return training, deployment


@contextmanager
def http_limits(timeout_s: int, max_retries: int) -> Iterator[None]:
    """MLflow reads these per request (mlflow.utils.rest_utils.http_request); set them only around
    our own calls so other MLflow users in the process keep theirs.

    Also keeps MLflow from printing "View run … at: URL" when a run ends
    (`TrackingServiceClient._log_url`, read per call): it prints the tracking URI as given,
    credentials included; `MlflowTracker.close` prints a redacted line instead."""
    wanted = {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, int(timeout_s))),  # MLflow parses an int
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(max(0, int(max_retries))),
        "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    }
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Tracker:
    """What the trainer talks to. `NullTracker` on ranks ≠ 0."""

    def log_params(self, params: dict) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: Path, artifact_path: Optional[str] = None) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def forget_after(self, step: int) -> None: ...
    def close(self, status: str = "FINISHED") -> None: ...

    run_id: Optional[str] = None

    def log_spec(self, spec: dict) -> None:
        """The resolved spec: its training settings as params, its deployment sections (`targets`, `env`,
        `output`) as one `deployment.yaml` artifact, URLs redacted in both (see `redact_urls`)."""
        import yaml

        training, deployment = split_spec(spec)
        self.log_params(training)
        self.log_text(yaml.safe_dump(redact_urls(deployment), sort_keys=False), DEPLOYMENT_ARTIFACT)


class NullTracker(Tracker):
    pass


def _not_found(exc: Exception) -> bool:
    return getattr(exc, "error_code", None) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


class MlflowTracker(Tracker):
    """One MLflow run. With `parent` (the job's run, same store and experiment), the run is created or
    reopened nested under it, the parent being created first if it could not be yet; a failure of either
    is one warning for both."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_name: str,
        tags: dict[str, str],
        max_buffer: int = 10000,
        run_id_path: Optional[Path] = None,
        http_timeout_s: int = 5,
        retry_initial_s: float = 5.0,
        retry_max_s: float = 120.0,
        parent: Optional["MlflowTracker"] = None,
    ):
        from mlflow.tracking import MlflowClient

        # The store's schema-migration chatter ("Creating initial MLflow database tables...") is not
        # the user's concern; real problems still come through as warnings.
        for noisy in ("mlflow.store.db.utils", "alembic"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        # Tags, like params, are stored where anyone with the run can read them: URLs go in redacted.
        self.experiment, self.run_name, self.tags = experiment, run_name, redact_urls(tags)
        self.experiment_id: Optional[str] = None
        self.run_id_path = Path(run_id_path) if run_id_path is not None else None
        self.parent = parent
        self.pending: deque[tuple[str, tuple]] = deque()
        self.max_buffer = max_buffer  # metric points
        self.buffered_points = 0
        self.dropped_points = 0
        self.http_timeout_s = http_timeout_s
        self.retry_initial_s, self.retry_max_s = retry_initial_s, retry_max_s
        self.retry_delay = retry_initial_s
        self.retry_at = 0.0  # time.monotonic() before which no request is attempted
        self.warned = False
        self.resumed = False
        self.run_id = None
        with http_limits(self.http_timeout_s, 0):
            try:
                self._start_run()
            except Exception as exc:  # unreachable at start: the run is created at the first successful flush
                self._failed(exc)

    # -- the run -----------------------------------------------------------------------------------------
    def _experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is not None:
            return exp.experiment_id
        artifact_location = None
        if self.uri.startswith("sqlite:///"):
            artifact_location = (Path(self.uri[len("sqlite:///") :]).parent / "artifacts").as_uri()
        return self.client.create_experiment(self.experiment, artifact_location=artifact_location)

    def _start_run(self) -> None:
        exp_id = self.experiment_id = self._experiment_id()
        saved = read_run_id(self.run_id_path) if self.run_id_path is not None else None
        if saved is not None:
            try:
                run = self.client.get_run(saved)
            except Exception as exc:
                if not _not_found(exc):
                    raise  # the server failed: retry later rather than split the stage into two runs
                run = None
            if run is not None and run.info.lifecycle_stage == "active" and run.info.experiment_id == exp_id:
                tags = self._run_tags()  # the parent first: a failure leaves the run as it was
                self.client.update_run(saved, status="RUNNING")
                self.run_id, self.resumed = saved, True
                self._do_tags(tags)
                return
        self.run_id = self.client.create_run(exp_id, tags=self._run_tags(), run_name=self.run_name).info.run_id
        self._keep_run_id()

    def _run_tags(self) -> dict[str, str]:
        """The run's tags, with `mlflow.parentRunId` (how MLflow nests runs) when it has a parent."""
        if self.parent is None:
            return self.tags
        return {**self.tags, "mlflow.parentRunId": self.parent.ensure_run()}

    def ensure_run(self) -> str:
        """This run's id, creating (or reopening) the run now if that has not succeeded yet; raises when
        MLflow fails (a nested run then retries with its own back-off)."""
        if self.run_id is None:
            with http_limits(self.http_timeout_s, 0):
                self._start_run()
        return self.run_id

    def _keep_run_id(self) -> None:
        """Write the run id to `run_id_path` (atomically), where a resumed stage finds it."""
        if self.run_id_path is not None:
            try:
                write_text_atomic(self.run_id_path, self.run_id + "\n")
            except OSError as exc:
                print(
                    f"warning: could not keep the MLflow run id in {self.run_id_path} ({exc}); "
                    "a resumed stage will start a new run",
                    file=sys.stderr,
                )

    # -- failures, back-off, buffer ------------------------------------------------------------------
    def _failed(self, exc: Exception) -> None:
        self.retry_at = time.monotonic() + self.retry_delay
        self.retry_delay = min(self.retry_delay * 2, self.retry_max_s)
        first = self.parent or self  # one warning per job: the stage runs share the parent's
        if not self.warned and not first.warned:
            message = redact(f"{type(exc).__name__}: {exc}", self.uri)[:300]  # redacted, then cut
            print(
                f"warning: MLflow at {redact_uri(self.uri)} failed ({message}); buffering up to "
                f"{self.max_buffer} metric points and retrying with back-off — training continues",
                file=sys.stderr,
            )
        self.warned = first.warned = True

    def _flush(self, force: bool = False) -> bool:
        """Send buffered calls in order; stop at the first failure (kept for the next retry).

        Between failures only `force` (close) tries before the back-off interval is over."""
        if not self.pending:
            return True
        if not force and time.monotonic() < self.retry_at:
            return False
        with http_limits(self.http_timeout_s, 0):
            while self.pending:
                kind, args = self.pending[0]
                try:
                    if self.run_id is None:
                        self._start_run()
                    getattr(self, f"_do_{kind}")(*args)
                except Exception as exc:  # any client/server failure: keep it, retry later
                    self._failed(exc)
                    return False
                self.pending.popleft()
                if kind == "metrics":
                    self.buffered_points -= len(args[0])
        self.retry_delay = self.retry_initial_s
        return True

    def _trim(self) -> None:
        """Drop the oldest metric points beyond `max_buffer`; params, artifacts and tags are kept."""
        excess = self.buffered_points - self.max_buffer
        i = 0
        while excess > 0 and i < len(self.pending):
            kind, args = self.pending[i]
            if kind != "metrics":
                i += 1
                continue
            metrics = args[0]
            if len(metrics) <= excess:
                del self.pending[i]
                n = len(metrics)
            else:
                for key in list(metrics)[:excess]:
                    del metrics[key]
                n = excess
            excess -= n
            self.buffered_points -= n
            self.dropped_points += n

    def _enqueue(self, kind: str, *args) -> None:
        self.pending.append((kind, args))
        if kind == "metrics":
            self.buffered_points += len(args[0])
        self._flush()
        self._trim()

    # -- the calls -----------------------------------------------------------------------------------
    def _do_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flatten(redact_urls(params)).items()]
        if self.resumed:
            # MLflow refuses a changed param value, and the refused batch would hold back every metric
            # queued behind it: a resumed run keeps the params it started with (wmtp.train.resume checks
            # that only platform-only keys, e.g. tracking.uri, can differ) and gets new keys only.
            logged = self.client.get_run(self.run_id).data.params
            items = [item for item in items if item.key not in logged]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def _do_metrics(self, metrics: dict, step: int, timestamp: int) -> None:
        from mlflow.entities import Metric

        items = [Metric(k, float(v), timestamp, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=items)

    def _do_artifact(self, path: str, artifact_path: Optional[str]) -> None:
        self.client.log_artifact(self.run_id, path, artifact_path)

    def _do_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def _do_tags(self, tags: dict) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in redact_urls(tags).items()])

    def _do_forget(self, step: int) -> None:
        """Remove the points after `step` from a resumed run (see `forget_after`).

        MLflow has no call that deletes metric points (and logging a step again adds a second point), so
        when there are such points the run is replaced: a new run with the old one's name, start time,
        tags, params and points up to `step` takes its place in the stage dir, and the old run is deleted
        (MLflow's soft delete: `mlflow runs restore` brings it back). Artifacts are not copied: a stage logs
        its spec.yaml again when it resumes, and its plots and evaluation only once it has finished.
        """
        from mlflow.entities import Param

        if not self.resumed:
            return  # a run created by this tracker has nothing logged yet
        old = self.client.get_run(self.run_id)
        history = [m for key in old.data.metrics for m in self.client.get_metric_history(self.run_id, key)]
        later = sum(1 for m in history if m.step > step)
        if not later:
            return  # the usual resume after SIGTERM: the checkpoint holds every step logged
        tags = {k: v for k, v in old.data.tags.items() if k != "mlflow.runName"}
        stopped_at = tags.get("early_stopping.step", "")
        if stopped_at.isdigit() and int(stopped_at) > step:  # a stop the resumed run has not reached
            tags.pop("early_stopping.step")
            tags.pop("early_stopping.reason", None)
        new_id = self.client.create_run(
            old.info.experiment_id, start_time=old.info.start_time, tags=tags, run_name=old.info.run_name
        ).info.run_id
        try:
            params = [Param(k, v) for k, v in old.data.params.items()]
            for i in range(0, len(params), 100):
                self.client.log_batch(new_id, params=params[i : i + 100])
            kept = [m for m in history if m.step <= step]
            for i in range(0, len(kept), 1000):  # MLflow's limit per log_batch
                self.client.log_batch(new_id, metrics=kept[i : i + 1000])
            self.client.delete_run(self.run_id)
        except Exception as exc:
            try:  # a retry starts over from the old run: leave no half copy behind
                self.client.delete_run(new_id)
            except Exception:
                pass
            if getattr(exc, "error_code", None) in ("PERMISSION_DENIED", "FEATURE_DISABLED", "INVALID_PARAMETER_VALUE"):
                # Refused, not unreachable: retrying would hold back every later point for good.
                print(
                    f"warning: MLflow refused to replace run {self.run_id} ({exc.error_code}); "
                    f"its {later} point(s) after step {step} stay beside the resumed run's",
                    file=sys.stderr,
                )
                return
            raise
        print(
            f"MLflow: run {self.run_id} held {later} metric point(s) after step {step}, from the interrupted "
            f"run; continuing in run {new_id}, a copy up to step {step} (the old run is deleted, restorable)"
        )
        self.run_id = new_id
        self._keep_run_id()

    def _do_terminate(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)

    def log_params(self, params):
        self._enqueue("params", params)

    def log_metrics(self, metrics, step):
        finite = {k: v for k, v in metrics.items() if v == v}  # MLflow rejects NaN on some stores
        if finite:
            self._enqueue("metrics", finite, step, int(time.time() * 1000))

    def log_artifact(self, path, artifact_path=None):
        self._enqueue("artifact", str(path), artifact_path)

    def log_text(self, text, artifact_file):
        self._enqueue("text", text, artifact_file)

    def set_tags(self, tags):
        self._enqueue("tags", tags)

    def forget_after(self, step: int) -> None:
        """A resumed stage continues from its checkpoint at `step`: what the interrupted run logged after
        it is not the history of the run that goes on, so it goes (`_do_forget`), in order, before
        anything logged after this call. Each (key, step) is then in the run once, with the values of the
        run that survived. Nothing to do for a new run or after a SIGTERM (saved at its last step)."""
        self._enqueue("forget", step)

    def close(self, status: str = "FINISHED", retries: int = 3, wait_s: float = 2.0) -> None:
        """Terminate the run, trying `retries` times (back-off ignored) before giving up; one summary line."""
        self.pending.append(("terminate", (status,)))
        for attempt in range(retries):
            if self._flush(force=True):
                break
            if attempt + 1 < retries:
                time.sleep(wait_s)
        dropped = (
            f"{self.dropped_points} metric point(s) dropped while it was unreachable "
            f"(buffer of {self.max_buffer} full, oldest first)"
        )
        if self.pending:
            others = len(self.pending) - sum(1 for kind, _ in self.pending if kind == "metrics")
            print(
                f"warning: MLflow at {redact_uri(self.uri)} unreachable at the end; {self.buffered_points} "
                f"metric point(s) and {others} other buffered call(s) not delivered"
                + (f"; {dropped}" if self.dropped_points else ""),
                file=sys.stderr,
            )
        elif self.dropped_points:
            print(
                f"warning: MLflow at {redact_uri(self.uri)}: buffered calls delivered, but {dropped}", file=sys.stderr
            )
        if not self.pending and self.uri.lower().startswith(("http://", "https://")):
            print(f"View run {self.run_name} at: {self.run_url()}")  # MLflow's own line, redacted

    def run_url(self) -> str:
        """The run's page in the UI of an http(s) tracking server, as MLflow prints it when a run ends
        but without the URI's userinfo and query: a link to paste anywhere (the browser asks for the login)."""
        parts = urlsplit(self.uri)
        base = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path.rstrip("/"), "", ""))
        return f"{base}/#/experiments/{self.experiment_id}/runs/{self.run_id}"


def read_run_id(path: Path) -> Optional[str]:
    """The run id kept in a stage dir's `mlflow_run_id` file, or None."""
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def make_tracker(
    is_main: bool,
    uri: Optional[str],
    experiment: str,
    run_name: str,
    tags: dict,
    max_buffer: int,
    stage_dir: Optional[Path] = None,
    parent: Optional[Tracker] = None,
) -> Tracker:
    """The tracker of one stage. With `stage_dir`, its MLflow run id is kept in `<stage_dir>/mlflow_run_id`
    so that a resumed stage continues the run. With `parent` (`make_job_tracker`), the run nests under the
    job's run, unless the stage tracks to another store or experiment (MLflow nests within one experiment)."""
    if not is_main:
        return NullTracker()
    uri = resolve_tracking_uri(uri)
    if not (isinstance(parent, MlflowTracker) and (parent.uri, parent.experiment) == (uri, experiment)):
        parent = None
    run_id_path = Path(stage_dir) / RUN_ID_FILE if stage_dir is not None else None
    return MlflowTracker(uri, experiment, run_name, tags, max_buffer, run_id_path=run_id_path, parent=parent)


def make_job_tracker(is_main: bool, uri: Optional[str], experiment: str, run_dir: Path, tags: dict) -> Tracker:
    """The parent run of one job: named after its run dir (`smoke-20261203-211406`), its id kept in
    `<run_dir>/mlflow_job_run_id` so that a resumed job reopens it. It holds no params or metrics; its
    stages' runs nest under it (`make_tracker(parent=…)`). A NullTracker on ranks ≠ 0."""
    if not is_main:
        return NullTracker()
    return MlflowTracker(
        resolve_tracking_uri(uri), experiment, Path(run_dir).name, tags, run_id_path=Path(run_dir) / JOB_RUN_ID_FILE
    )
