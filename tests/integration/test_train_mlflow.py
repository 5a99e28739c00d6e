"""Tracking against a real `mlflow server` (sqlite backend, artifacts on a moto S3 server)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.integration.servers import free_port, mlflow_server, moto_s3, start_mlflow_server
from wmtp.tracking import MlflowTracker

pytestmark = pytest.mark.slow


def train_command(overrides, run_dir):
    command = [sys.executable, "-m", "wmtp.train", "baseline", "--run-dir", str(run_dir)]
    for o in overrides:
        command += ["--set", o]
    return command


def overrides_for(smoke_overrides, uri, steps):
    kept = [o for o in smoke_overrides if not o.startswith("tracking.uri=")]
    return kept + [f"tracking.uri={uri}", "tracking.experiment=wmtp-test", f"train.max_steps={steps}",
                   "train.grad_accum_steps=1", "train.log_interval=1", "train.eval_interval=1000",
                   "train.save_interval=1000", "data.sampling.n_samples=8", "train.num_epochs=100",
                   "distributed.strategy=none"]


def test_params_metrics_and_artifacts_arrive(smoke_overrides, tmp_path):
    with moto_s3("mlflow-artifacts") as s3, mlflow_server(tmp_path, s3, "mlflow-artifacts") as server:
        result = subprocess.run(train_command(overrides_for(smoke_overrides, server.uri, 4), tmp_path / "run"),
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        client = MlflowClient(server.uri)
        [run] = client.search_runs([client.get_experiment_by_name("wmtp-test").experiment_id])
        assert run.data.params["train.max_steps"] == "4"
        assert run.data.tags["experiment"] == "baseline" and len(run.data.tags["spec_hash"]) == 12
        history = client.get_metric_history(run.info.run_id, "loss/total")
        assert [m.step for m in history] == [1, 2, 3, 4]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert "spec.yaml" in artifacts
        assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} >= {"plots/loss_per_head.png"}
        assert run.info.status == "FINISHED"


@pytest.mark.parametrize("given_by", ["--set", "MLFLOW_TRACKING_URI"])
def test_credentials_in_the_tracking_uri_connect_but_are_never_shown_or_stored(smoke_overrides, tmp_path, given_by):
    """`http://user:pw@host`: MLflow sends them as basic auth (this server ignores it); nothing prints or keeps them."""
    with moto_s3("mlflow-artifacts") as s3, mlflow_server(tmp_path, s3, "mlflow-artifacts") as server:
        port = server.uri.rsplit(":", 1)[1]
        uri = f"http://user:s3cret@127.0.0.1:{port}"
        overrides = [o for o in overrides_for(smoke_overrides, uri, 2) if not o.startswith("tracking.uri=")]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        if given_by == "--set":
            overrides.append(f"tracking.uri={uri}")
        else:
            env["MLFLOW_TRACKING_URI"] = uri
        run_dir = tmp_path / "run"
        command = [sys.executable, "-m", "wmtp_cli.main", "train", "baseline", "--run-dir", str(run_dir)]
        for o in overrides:
            command += ["--set", o]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "s3cret" not in result.stdout + result.stderr
        # MLflow's own "View run … at: URL" line, minus the credentials.
        assert f"View run baseline/baseline at: http://127.0.0.1:{port}/#/experiments/" in result.stdout
        for path in run_dir.rglob("*"):
            assert not path.is_file() or b"s3cret" not in path.read_bytes(), path

        client = MlflowClient(server.uri)
        [run] = client.search_runs([client.get_experiment_by_name("wmtp-test").experiment_id])
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss/total")] == [1, 2]  # it connected
        assert "s3cret" not in repr(run.data.params) + repr(run.data.tags)
        if given_by == "--set":
            assert run.data.params["tracking.uri"] == f"http://***@127.0.0.1:{port}"
        spec_yaml = Path(client.download_artifacts(run.info.run_id, "spec.yaml", str(tmp_path)))
        assert "s3cret" not in spec_yaml.read_text() and "experiment: wmtp-test" in spec_yaml.read_text()


def test_server_killed_mid_run_does_not_stop_training(smoke_overrides, tmp_path):
    with moto_s3("mlflow-artifacts") as s3, mlflow_server(tmp_path, s3, "mlflow-artifacts") as server:
        run_dir = tmp_path / "run"
        proc = subprocess.Popen(train_command(overrides_for(smoke_overrides, server.uri, 40), run_dir),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        metrics_file = run_dir / "baseline" / "metrics.jsonl"
        deadline = time.time() + 180
        while not (metrics_file.exists() and len(metrics_file.read_text().splitlines()) >= 2):
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
            time.sleep(0.05)
        server.kill()
        output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output
    assert output.count("buffering up to") == 1  # warned once, not once per step
    assert "metric point(s) and" in output and "buffered call(s) not delivered" in output  # said what was lost
    assert (run_dir / "baseline" / "checkpoints" / "final").is_dir()


def test_what_is_logged_during_an_outage_arrives_when_the_server_is_back(tmp_path, capsys):
    port = free_port()
    plot = tmp_path / "loss_per_head.png"
    plot.write_bytes(b"\x89PNG\r\n\x1a\n")
    with moto_s3("mlflow-artifacts") as s3:
        server = start_mlflow_server(tmp_path, s3, "mlflow-artifacts", port)
        try:
            tracker = MlflowTracker(server.uri, "wmtp-test", "outage", {"experiment": "baseline"},
                                    retry_initial_s=0.2, retry_max_s=0.5)
            tracker.log_params({"train": {"max_steps": 12}})
            for step in (1, 2, 3):
                tracker.log_metrics({"loss/total": 1.0 / step, "lr": 0.1}, step)
            assert not tracker.pending and not tracker.warned

            server.kill()  # mid-run
            for step in range(4, 11):
                tracker.log_metrics({"loss/total": 1.0 / step, "lr": 0.1}, step)
            tracker.log_artifact(plot, "plots")
            assert tracker.warned and tracker.buffered_points == 14

            server = start_mlflow_server(tmp_path, s3, "mlflow-artifacts", port)  # same port and backend store
            time.sleep(0.6)  # past the capped back-off: the next log call flushes the buffer
            tracker.log_metrics({"loss/total": 1.0 / 11, "lr": 0.1}, 11)
            assert not tracker.pending and tracker.buffered_points == 0
            tracker.log_metrics({"loss/total": 1.0 / 12, "lr": 0.1}, 12)
            tracker.close()

            client = MlflowClient(server.uri)
            [run] = client.search_runs([client.get_experiment_by_name("wmtp-test").experiment_id])
            assert run.info.run_id == tracker.run_id and run.info.status == "FINISHED"
            assert run.data.params["train.max_steps"] == "12"
            for key in ("loss/total", "lr"):
                assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == list(range(1, 13))
            assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} == {"plots/loss_per_head.png"}
        finally:
            server.kill()
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "buffering up to" in err  # one warning, nothing lost at the end
