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
    return kept + [
        f"tracking.uri={uri}",
        "tracking.experiment=wmtp-test",
        f"train.max_steps={steps}",
        "train.grad_accum_steps=1",
        "train.log_interval=1",
        "train.eval_interval=1000",
        "train.save_interval=1000",
        "data.sampling.n_samples=8",
        "train.num_epochs=100",
        "distributed.strategy=none",
    ]


def test_params_metrics_and_artifacts_arrive(baseline_overrides, tmp_path):
    with moto_s3("mlflow-artifacts") as s3, mlflow_server(tmp_path, s3, "mlflow-artifacts") as server:
        result = subprocess.run(
            train_command(overrides_for(baseline_overrides, server.uri, 4), tmp_path / "run"),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        client = MlflowClient(server.uri)
        experiment_id = client.get_experiment_by_name("wmtp-test").experiment_id
        [run] = client.search_runs([experiment_id], "tags.stage = 'baseline'")  # not the job's run
        assert run.data.params["train.max_steps"] == "4"
        assert run.data.tags["experiment"] == "baseline" and len(run.data.tags["spec_hash"]) == 12
        history = client.get_metric_history(run.info.run_id, "loss/total")
        assert [m.step for m in history] == [1, 2, 3, 4]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"spec.yaml", "deployment.yaml"} <= artifacts
        assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} >= {"plots/loss_per_head.png"}
        assert run.info.status == "FINISHED"


@pytest.mark.parametrize("given_by", ["--set", "MLFLOW_TRACKING_URI"])
def test_credentials_in_the_tracking_uri_connect_but_are_never_shown_or_stored(baseline_overrides, tmp_path, given_by):
    """`http://user:pw@host`: MLflow sends them as basic auth (this server ignores it); nothing prints or keeps them."""
    with moto_s3("mlflow-artifacts") as s3, mlflow_server(tmp_path, s3, "mlflow-artifacts") as server:
        port = server.uri.rsplit(":", 1)[1]
        uri = f"http://user:s3cret@127.0.0.1:{port}"
        overrides = [o for o in overrides_for(baseline_overrides, uri, 2) if not o.startswith("tracking.uri=")]
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
        # MLflow's own "View run … at: URL" line, minus the credentials (the stage's run, then the job's).
        assert f"View run run/baseline at: http://127.0.0.1:{port}/#/experiments/" in result.stdout
        assert f"View run run at: http://127.0.0.1:{port}/#/experiments/" in result.stdout
        for path in run_dir.rglob("*"):
            assert not path.is_file() or b"s3cret" not in path.read_bytes(), path

        client = MlflowClient(server.uri)
        experiment_id = client.get_experiment_by_name("wmtp-test").experiment_id
        [run] = client.search_runs([experiment_id], "tags.stage = 'baseline'")  # not the job's run
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss/total")] == [1, 2]  # it connected
        assert "s3cret" not in repr(run.data.params) + repr(run.data.tags)
        if given_by == "--set":
            assert run.data.params["tracking.uri"] == f"http://***@127.0.0.1:{port}"
        spec_yaml = Path(client.download_artifacts(run.info.run_id, "spec.yaml", str(tmp_path)))
        assert "s3cret" not in spec_yaml.read_text() and "experiment: wmtp-test" in spec_yaml.read_text()


def test_server_killed_mid_run_does_not_stop_training(baseline_overrides, tmp_path):
    with moto_s3("mlflow-artifacts") as s3, mlflow_server(tmp_path, s3, "mlflow-artifacts") as server:
        run_dir = tmp_path / "run"
        proc = subprocess.Popen(
            train_command(overrides_for(baseline_overrides, server.uri, 40), run_dir),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
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
            tracker = MlflowTracker(
                server.uri, "wmtp-test", "outage", {"experiment": "baseline"}, retry_initial_s=0.2, retry_max_s=0.5
            )
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


def test_a_job_is_one_parent_run_with_its_stages_nested_and_deployment_in_one_artifact(smoke_overrides, tmp_path):
    """Two jobs of `smoke`: each one parent run named after its run dir, its stage runs nested under it
    and named `<job>/<stage>`; a resumed job reopens its parent; `targets`/`env`/`output` are no params
    but one `deployment.yaml` per stage run, URL credentials redacted."""
    import yaml

    deployment = [
        "targets.skypilot.mlflow_uri=http://user:s3cret@mlflow.example.org",
        "targets.vessl.code_repo=https://x-token:s3cret@github.com/org/repo.git",
        "targets.k8s.namespace=team-a",
        "env.region=eu-west",
    ]
    with moto_s3("mlflow-artifacts") as s3, mlflow_server(tmp_path, s3, "mlflow-artifacts") as server:
        overrides = overrides_for(smoke_overrides, server.uri, 2) + deployment

        def train(run_dir, *stages):
            command = [sys.executable, "-m", "wmtp.train", "smoke", "--run-dir", str(run_dir)]
            for o in overrides:
                command += ["--set", o]
            for stage in stages:
                command += ["--stage", stage]
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
            )
            assert result.returncode == 0, result.stdout + result.stderr
            assert "s3cret" not in result.stdout + result.stderr
            return result.stdout

        job_a, job_b = tmp_path / "smoke-a", tmp_path / "smoke-b"
        train(job_a, "critic")
        parent_a = (job_a / "mlflow_job_run_id").read_text().strip()
        output = train(job_a, "critic", "baseline")  # the same job again: critic skipped, baseline trains
        assert "critic: already finished" in output
        assert (job_a / "mlflow_job_run_id").read_text().strip() == parent_a
        train(job_b, "baseline")  # another job of the same experiment

        client = MlflowClient(server.uri)
        runs = client.search_runs([client.get_experiment_by_name("wmtp-test").experiment_id])
        parents = {r.info.run_name: r for r in runs if "stage" not in r.data.tags}
        assert set(parents) == {"smoke-a", "smoke-b"}  # one per job, reopened rather than doubled on resume
        assert parents["smoke-a"].info.run_id == parent_a
        for job, parent in parents.items():
            assert parent.info.status == "FINISHED" and "mlflow.parentRunId" not in parent.data.tags
            assert parent.data.tags["run_dir"] == str((tmp_path / job).resolve()) and parent.data.tags["job"] == job
            assert not parent.data.params and not parent.data.metrics

        stages = {r.info.run_name: r for r in runs if "stage" in r.data.tags}
        assert set(stages) == {"smoke-a/critic", "smoke-a/baseline", "smoke-b/baseline"}
        for name, run in stages.items():
            job, stage = name.split("/")
            assert run.data.tags["mlflow.parentRunId"] == parents[job].info.run_id, name
            assert run.data.tags["stage"] == stage and run.data.tags["job"] == job
            assert run.info.run_id == (tmp_path / job / stage / "mlflow_run_id").read_text().strip()
            assert run.info.status == "FINISHED"
            params = run.data.params
            assert params["train.max_steps"] == "2" and params["tracking.experiment"] == "wmtp-test"
            assert not [k for k in params if k.split(".")[0] in ("targets", "env", "output")], name
            assert "s3cret" not in repr(params) + repr(run.data.tags)
            assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"deployment.yaml", "spec.yaml"}
        # The end-of-stage evaluation still logs into the stage's own run, not the job's.
        assert "eval/humaneval/pass_at_1" in stages["smoke-a/baseline"].data.metrics

        text = Path(
            client.download_artifacts(stages["smoke-a/critic"].info.run_id, "deployment.yaml", str(tmp_path))
        ).read_text()
        assert "s3cret" not in text
        shown = yaml.safe_load(text)
        assert set(shown) == {"targets", "env", "output"}
        assert shown["targets"]["skypilot"]["mlflow_uri"] == "http://***@mlflow.example.org"
        assert shown["targets"]["vessl"]["code_repo"] == "https://***@github.com/org/repo.git"
        assert shown["targets"]["k8s"]["namespace"] == "team-a" and shown["env"]["region"] == "eu-west"
        assert shown["output"]["root"] == "storage/checkpoints" and "HF_TOKEN" in shown["env"]["secrets"]


def test_a_job_started_while_the_server_is_down_nests_its_stages_once_it_is_back(tmp_path, capsys):
    """Neither the job's run nor a stage's can be created at first: one warning for both, nothing raised;
    once the server answers, the stage's first flush creates the job's run, then its own, nested under it."""
    from wmtp.tracking import JOB_RUN_ID_FILE, RUN_ID_FILE, make_job_tracker, make_tracker

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    run_dir = tmp_path / "smoke-down"
    (run_dir / "baseline").mkdir(parents=True)
    with moto_s3("mlflow-artifacts") as s3:
        job = make_job_tracker(True, uri, "wmtp-test", run_dir, {"job": run_dir.name})
        stage = make_tracker(
            True,
            uri,
            "wmtp-test",
            "smoke-down/baseline",
            {"stage": "baseline"},
            100,
            stage_dir=run_dir / "baseline",
            parent=job,
        )
        for tracker in (job, stage):
            tracker.retry_initial_s = tracker.retry_delay = 0.2
            tracker.retry_max_s, tracker.retry_at = 0.5, 0.0
        stage.log_spec({"train": {"max_steps": 3}, "targets": {"k8s": {"namespace": "wmtp"}}, "env": {}})
        stage.log_metrics({"loss/total": 1.0}, 1)
        assert job.run_id is None and stage.run_id is None and stage.pending
        server = start_mlflow_server(tmp_path, s3, "mlflow-artifacts", port)
        try:
            time.sleep(0.6)  # past the capped back-off
            stage.log_metrics({"loss/total": 0.5}, 2)
            assert not stage.pending and job.run_id is not None
            stage.close()
            job.close()
            client = MlflowClient(uri)
            parent, child = client.get_run(job.run_id), client.get_run(stage.run_id)
        finally:
            server.kill()
    assert parent.info.run_name == "smoke-down" and parent.info.status == "FINISHED"
    assert child.data.tags["mlflow.parentRunId"] == job.run_id and child.info.status == "FINISHED"
    assert child.data.params == {"train.max_steps": "3"}
    assert (run_dir / JOB_RUN_ID_FILE).read_text().strip() == job.run_id
    assert (run_dir / "baseline" / RUN_ID_FILE).read_text().strip() == stage.run_id
    assert capsys.readouterr().err.count("buffering up to") == 1  # one warning for the job and its stage
