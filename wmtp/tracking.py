"""MLflow tracking on rank 0, resilient to an unreachable or failing server.

- URI: the spec's `tracking.uri`, else `$MLFLOW_TRACKING_URI`, else a local sqlite store under
  `storage/mlflow/` (the embedded default).
- A failure never stops training: the first one prints a single warning, calls are buffered
  (bounded; oldest metric points dropped first) and retried at the next log call and at `close()`.
- Credentials come from the environment (MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN, AWS_* for
  artifacts) and are never logged: params are the resolved spec, which holds secret *names* only.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Optional

LOCAL_STORE = Path("storage/mlflow")


def local_store_uri(root: Path = LOCAL_STORE) -> str:
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def resolve_tracking_uri(configured: Optional[str]) -> str:
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or local_store_uri()


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


class Tracker:
    """What the trainer talks to. `NullTracker` on ranks ≠ 0."""

    def log_params(self, params: dict) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: Path, artifact_path: Optional[str] = None) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def close(self, status: str = "FINISHED") -> None: ...

    run_id: Optional[str] = None


class NullTracker(Tracker):
    pass


class MlflowTracker(Tracker):
    def __init__(self, uri: str, experiment: str, run_name: str, tags: dict[str, str], max_buffer: int = 10000):
        # Fail fast instead of MLflow's default minutes of retries: we buffer and retry ourselves.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow.tracking import MlflowClient

        # The store's schema-migration chatter ("Creating initial MLflow database tables...") is not
        # the user's concern; real problems still come through as warnings.
        for noisy in ("mlflow.store.db.utils", "alembic"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.experiment, self.run_name, self.tags = experiment, run_name, tags
        self.pending: deque[tuple[str, tuple]] = deque()
        self.max_buffer = max_buffer
        self.warned = False
        self.run_id = None
        try:
            self._start_run()
        except Exception as exc:  # unreachable at start: the run is created at the first successful flush
            self._warn(exc)

    def _start_run(self) -> None:
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is None:
            artifact_location = None
            if self.uri.startswith("sqlite:///"):
                artifact_location = (Path(self.uri[len("sqlite:///"):]).parent / "artifacts").as_uri()
            exp_id = self.client.create_experiment(self.experiment, artifact_location=artifact_location)
        else:
            exp_id = exp.experiment_id
        self.run_id = self.client.create_run(exp_id, tags=self.tags, run_name=self.run_name).info.run_id

    def _warn(self, exc: Exception) -> None:
        if not self.warned:
            print(f"warning: MLflow at {self.uri} failed ({type(exc).__name__}: {str(exc)[:200]}); "
                  "buffering and retrying — training continues", file=sys.stderr)
            self.warned = True

    def _flush(self) -> bool:
        """Send buffered calls in order; stop at the first failure (kept for the next retry)."""
        while self.pending:
            kind, args = self.pending[0]
            try:
                if self.run_id is None:
                    self._start_run()
                getattr(self, f"_do_{kind}")(*args)
            except Exception as exc:  # any client/server failure: keep it, retry later
                self._warn(exc)
                return False
            self.pending.popleft()
        return True

    def _enqueue(self, kind: str, *args) -> None:
        self.pending.append((kind, args))
        while len(self.pending) > self.max_buffer:
            # Drop the oldest metric batch, never params/artifacts/tags.
            for i, (k, _) in enumerate(self.pending):
                if k == "metrics":
                    del self.pending[i]
                    break
            else:
                break
        self._flush()

    def _do_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def _do_metrics(self, metrics: dict, step: int, timestamp: int) -> None:
        from mlflow.entities import Metric

        items = [Metric(k, float(v), timestamp, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=items)

    def _do_artifact(self, path: str, artifact_path: Optional[str]) -> None:
        self.client.log_artifact(self.run_id, path, artifact_path)

    def _do_tags(self, tags: dict) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, v)

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

    def set_tags(self, tags):
        self._enqueue("tags", tags)

    def close(self, status: str = "FINISHED", retries: int = 3, wait_s: float = 2.0) -> None:
        self._enqueue("terminate", status)
        for _ in range(retries):
            if self._flush():
                return
            time.sleep(wait_s)
        if self.pending:
            print(f"warning: MLflow unreachable at the end; {len(self.pending)} buffered call(s) not delivered",
                  file=sys.stderr)


def make_tracker(is_main: bool, uri: Optional[str], experiment: str, run_name: str, tags: dict, max_buffer: int) -> Tracker:
    if not is_main:
        return NullTracker()
    return MlflowTracker(resolve_tracking_uri(uri), experiment, run_name, tags, max_buffer)
