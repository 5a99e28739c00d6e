"""MLflow tracker: hanging server, back-off, the metric-point buffer, run-id persistence, redaction."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from wmtp import tracking
from wmtp.tracking import MlflowTracker, make_tracker, redact, redact_uri


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def hanging_server():
    """A loopback server that accepts connections and never answers; yields its URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held, stop = [], threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


class FakeClient:
    """Just the MlflowClient calls the tracker makes; `down` makes every call fail like a dead server."""

    def __init__(self):
        self.down = False
        self.calls = 0
        self.metrics: list[tuple[str, int]] = []
        self.params: dict[str, str] = {}
        self.status = None

    def _call(self):
        self.calls += 1
        if self.down:
            raise ConnectionError("server down")

    def get_experiment_by_name(self, name):
        self._call()
        return None

    def create_experiment(self, name, artifact_location=None):
        self._call()
        return "1"

    def create_run(self, exp_id, tags=None, run_name=None):
        self._call()
        return type("Run", (), {"info": type("Info", (), {"run_id": "r1"})()})()

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        self._call()
        self.metrics += [(m.key, m.step) for m in metrics]
        self.params.update({p.key: p.value for p in params})

    def set_terminated(self, run_id, status=None):
        self._call()
        self.status = status


@pytest.fixture
def down_tracker(capsys):
    """A tracker whose server refused it at start (one warning), then talks to a FakeClient that is down."""
    tracker = MlflowTracker(f"http://127.0.0.1:{closed_port()}", "e", "r", {}, max_buffer=10)
    tracker.client = FakeClient()
    tracker.client.down = True
    capsys.readouterr()
    return tracker


def test_hanging_server_costs_one_timeout_not_one_per_log_call(hanging_server, capsys):
    # MLflow's default is a 120 s timeout with retries; before, ours was 10 s on every call.
    start = time.monotonic()
    tracker = MlflowTracker(hanging_server, "e", "r", {})
    for step in range(1, 21):
        tracker.log_metrics({"loss": 1.0 / step}, step)
    elapsed = time.monotonic() - start
    assert elapsed < 15, f"{elapsed:.1f} s for 20 log calls against a hanging server"
    assert tracker.buffered_points == 20
    assert capsys.readouterr().err.count("buffering up to") == 1
    # The short limits applied only around the tracker's own requests.
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ or os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] != "5"


def test_http_limits_are_read_by_mlflow_per_request_and_restored(monkeypatch):
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    with tracking.http_limits(3, 0):
        assert (MLFLOW_HTTP_REQUEST_TIMEOUT.get(), MLFLOW_HTTP_REQUEST_MAX_RETRIES.get()) == (3, 0)
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "120"
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ


def test_failures_back_off_doubling_up_to_a_cap(down_tracker, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(tracking.time, "monotonic", lambda: now[0])
    tracker, client = down_tracker, down_tracker.client
    tracker.retry_initial_s, tracker.retry_max_s = 5.0, 20.0
    tracker.retry_delay, tracker.retry_at = 5.0, 0.0
    tracker.max_buffer = 1000

    attempts = []
    for second in range(0, 80):  # one log call per second for 80 s
        now[0] = 1000.0 + second
        before = client.calls
        tracker.log_metrics({"loss": 1.0}, second)
        if client.calls > before:
            attempts.append(second)
    assert attempts == [0, 5, 15, 35, 55, 75]  # waits 5, 10, 20, then capped at 20

    client.down = False
    now[0] += 20
    tracker.log_metrics({"loss": 0.5}, 100)
    assert not tracker.pending and tracker.retry_delay == 5.0  # delivered, back-off reset
    assert [s for _, s in client.metrics] == list(range(80)) + [100]


def test_buffer_bound_counts_metric_points_and_drops_the_oldest(down_tracker, capsys):
    tracker, client = down_tracker, down_tracker.client  # max_buffer=10 points
    tracker.log_params({"a": {"b": 1}})
    for step in (1, 2, 3):  # 12 points
        tracker.log_metrics({"m0": 0.0, "m1": 1.0, "m2": 2.0, "m3": 3.0}, step)
    assert tracker.buffered_points == 10 and tracker.dropped_points == 2
    assert [kind for kind, _ in tracker.pending] == ["params", "metrics", "metrics", "metrics"]
    for step in range(4, 10):  # 24 more: only the last 10 points are kept, params never dropped
        tracker.log_metrics({"m0": 0.0, "m1": 1.0, "m2": 2.0, "m3": 3.0}, step)
    assert tracker.buffered_points == 10 and tracker.dropped_points == 26
    assert [kind for kind, _ in tracker.pending] == ["params", "metrics", "metrics", "metrics"]

    client.down = False
    tracker.close(retries=1)
    assert client.params == {"a.b": "1"} and client.status == "FINISHED"
    assert client.metrics == [("m2", 7), ("m3", 7)] + [(f"m{i}", s) for s in (8, 9) for i in range(4)]
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "26 metric point(s) dropped" in err and "buffer of 10 full" in err


def test_undelivered_at_the_end_is_reported_in_points(down_tracker, capsys):
    for step in (1, 2):
        down_tracker.log_metrics({"a": 1.0, "b": 2.0, "c": float("nan")}, step)
    down_tracker.close(retries=2, wait_s=0)
    err = capsys.readouterr().err
    assert err.count("warning") == 1
    assert "4 metric point(s) and 1 other buffered call(s) not delivered" in err
    assert "dropped" not in err


def test_resumed_stage_continues_its_mlflow_run(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    stage_dir = tmp_path / "run" / "baseline"
    stage_dir.mkdir(parents=True)
    tags = {"experiment": "baseline", "run_dir": str(stage_dir)}

    first = make_tracker(True, uri, "wmtp-test", "baseline/baseline", tags, 100, stage_dir=stage_dir)
    first.log_metrics({"loss": 1.0}, 1)
    first.log_metrics({"loss": 0.9}, 2)
    first.close("KILLED")  # preempted
    assert (stage_dir / "mlflow_run_id").read_text().strip() == first.run_id

    second = make_tracker(True, uri, "wmtp-test", "baseline/baseline", tags, 100, stage_dir=stage_dir)
    assert second.run_id == first.run_id and second.resumed
    second.log_metrics({"loss": 0.8}, 3)
    second.close("FINISHED")

    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("wmtp-test").experiment_id])
    assert run.info.run_id == first.run_id and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3]


def test_a_saved_run_id_unknown_to_the_store_starts_a_new_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "mlflow_run_id").write_text("0123456789abcdef0123456789abcdef\n")
    tracker = make_tracker(True, uri, "wmtp-test", "r", {}, 100, stage_dir=tmp_path)
    assert tracker.run_id and not tracker.resumed
    assert (tmp_path / "mlflow_run_id").read_text().strip() == tracker.run_id
    tracker.close()


def test_no_run_id_is_kept_without_a_stage_dir(tmp_path):
    tracker = make_tracker(True, f"sqlite:///{tmp_path / 'mlflow.db'}", "wmtp-test", "r", {}, 100)
    assert tracker.run_id_path is None and tracker.run_id
    tracker.close()


@pytest.mark.parametrize(
    "uri, shown",
    [
        ("https://user:s3cret@mlflow.example.org/path?token=abc#frag", "https://***@mlflow.example.org/path?***#***"),
        ("http://:tok@127.0.0.1:5000", "http://***@127.0.0.1:5000"),
        ("https://mlflow.example.org", "https://mlflow.example.org"),
        ("sqlite:////abs/storage/mlflow/mlflow.db", "sqlite:////abs/storage/mlflow/mlflow.db"),
    ],
)
def test_redact_uri(uri, shown):
    assert redact_uri(uri) == shown


def test_redact_in_free_text():
    text = "API request to https://u:pw@h/api/2.0/x?run_id=1 failed; user u:pw"
    assert redact(text, "https://u:pw@h") == "API request to https://***@h/api/2.0/x?*** failed; user ***"


def test_warnings_never_print_credentials_from_the_uri(capsys):
    port = closed_port()
    tracker = MlflowTracker(f"http://alice:s3cret@127.0.0.1:{port}/?token=t0k3n", "e", "r", {})
    tracker.log_metrics({"loss": 1.0}, 1)
    tracker.close(retries=1)
    err = capsys.readouterr().err
    assert "buffering up to" in err and "not delivered" in err
    assert f"http://***@127.0.0.1:{port}/?***" in err
    assert "s3cret" not in err and "alice" not in err and "t0k3n" not in err


def test_a_resumed_run_forgets_the_points_after_its_checkpoint(tmp_path, capsys):
    """MLflow cannot delete metric points: the run is replaced by a copy up to the checkpoint's step,
    which the stage dir then names; the killed run's later points are gone, params survive a
    platform-only change (MLflow refuses changed params, which would block every later point)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    stage_dir = tmp_path / "run" / "baseline"
    stage_dir.mkdir(parents=True)
    killed = make_tracker(True, uri, "wmtp-test", "baseline/baseline", {"stage": "baseline"}, 100, stage_dir=stage_dir)
    killed.log_params({"train": {"lr": 1e-5}, "targets": {"k8s": {"namespace": "a"}}})
    for step in range(1, 6):
        killed.log_metrics({"loss": 10.0 + step}, step)
    # SIGKILL: no close(); the checkpoint was at step 3

    resumed = make_tracker(True, uri, "wmtp-test", "baseline/baseline", {"stage": "baseline"}, 100, stage_dir=stage_dir)
    resumed.forget_after(3)
    resumed.log_params({"train": {"lr": 1e-5}, "targets": {"k8s": {"namespace": "b"}}})
    for step in range(4, 7):
        resumed.log_metrics({"loss": 20.0 + step}, step)
    resumed.close("FINISHED")

    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("wmtp-test").experiment_id])
    assert run.info.run_id == resumed.run_id == (stage_dir / "mlflow_run_id").read_text().strip() != killed.run_id
    assert run.info.run_name == "baseline/baseline" and run.info.status == "FINISHED"
    assert run.data.tags["stage"] == "baseline" and run.data.params["train.lr"] == "1e-05"
    assert run.data.params["targets.k8s.namespace"] == "a"  # as the run started
    history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss"))
    assert history == [(1, 11.0), (2, 12.0), (3, 13.0), (4, 24.0), (5, 25.0), (6, 26.0)]
    assert client.get_run(killed.run_id).info.lifecycle_stage == "deleted"  # restorable
    assert "2 metric point(s) after step 3" in capsys.readouterr().out


def test_a_resume_at_the_last_logged_step_keeps_its_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = make_tracker(True, uri, "wmtp-test", "r", {}, 100, stage_dir=tmp_path)
    first.log_metrics({"loss": 1.0}, 1)
    first.close("KILLED")  # SIGTERM: saved at step 1
    second = make_tracker(True, uri, "wmtp-test", "r", {}, 100, stage_dir=tmp_path)
    second.forget_after(1)
    second.close()
    assert second.run_id == first.run_id
