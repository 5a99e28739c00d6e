"""Evaluation runner: options refused before generation, files and summary of a run on the micro model,
pass@k recomputed from the written samples, speculative = greedy, `score_file`, MLflow, policy vs
reference token loss."""

from __future__ import annotations

import json
import time
from collections import defaultdict

import pytest

from wmtp.errors import EvalError
from wmtp.eval import generation
from wmtp.eval.benchmarks import load_humaneval
from wmtp.eval.options import EvalOptions
from wmtp.eval.passk import pass_at_k
from wmtp.eval.runner import evaluate, parse_ks, report_ks, score_file

pytestmark = pytest.mark.usefixtures("one_torch_thread", "no_tracking_env")

SUMMARY_KEYS = {
    "benchmark",
    "model",
    "n_tasks",
    "n_samples",
    "samples_per_task",
    "pass@1",
    "mean_completion_tokens",
    "decoding_tokens_per_second",
    "examples",
    "config",
    "statuses",
    "generation",
    "files",
}


@pytest.fixture
def never_generate(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("generation must not start")

    monkeypatch.setattr(generation, "generate", fail)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def recomputed_pass_at_k(records, k):
    per_task = defaultdict(list)
    for r in records:
        per_task[r["task_id"]].append(r["passed"])
    return sum(pass_at_k(len(v), sum(v), k) for v in per_task.values()) / len(per_task)


def test_ks_reported_are_the_requested_and_1_5_10_up_to_n():
    assert report_ks((), 1) == [1]
    assert report_ks((2,), 10) == [1, 2, 5, 10]
    assert report_ks((3, 1), 4) == [1, 3]
    assert parse_ks("1, 10") == (1, 10) and parse_ks(None) == ()
    with pytest.raises(EvalError, match="--k 11 is larger than the 10 samples"):
        report_ks((11,), 10)
    with pytest.raises(EvalError, match="comma-separated"):
        parse_ks("1;10")


def test_a_stage_dir_means_its_final_checkpoint(tmp_path):
    from wmtp.eval.runner import default_out_dir, resolve_model_dir

    final = tmp_path / "run-1" / "baseline" / "checkpoints" / "final"
    (final / "configs").mkdir(parents=True)
    (final / "configs" / "params.json").write_text("{}")
    assert resolve_model_dir(tmp_path / "run-1" / "baseline") == final
    assert resolve_model_dir(final) == final
    assert default_out_dir(final, "mbpp").name.startswith("run-1-baseline-final-mbpp-")


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"n": 2, "ks": [5], "temperature": 0.8}, "--k: pass@5 needs 1 ≤ k ≤ n"),
        ({"ks": [0]}, "--k: pass@0 needs 1 ≤ k ≤ n"),
        ({"n": 3}, "--n: 3 greedy samples would all be the same completion; set temperature > 0"),
        ({"n": 0}, "--n: Input should be greater than or equal to 1 (got 0)"),
        ({"limit": 0}, "--limit: Input should be greater than or equal to 1 (got 0)"),
        ({"top_p": 0}, "--top-p: Input should be greater than 0 (got 0)"),
        ({"temperature": -1}, "--temperature: Input should be greater than or equal to 0 (got -1)"),
        ({"timeout_s": float("nan")}, "--timeout: Input should be a finite number"),
    ],
)
def test_bad_options_name_their_flag(flags, message):
    with pytest.raises(EvalError) as error:
        EvalOptions.from_flags(**flags)
    assert str(error.value).startswith(message)


def test_a_bad_worker_count_is_refused_before_loading_or_generating(tmp_path, never_generate):
    with pytest.raises(EvalError, match="--workers must be at least 1"):
        evaluate(tmp_path / "no-such-model", "humaneval", out_dir=tmp_path / "out", workers=0)
    assert not (tmp_path / "out").exists()


def test_greedy_run_writes_samples_and_summary(micro_models, tmp_path):
    out = tmp_path / "eval"
    result = evaluate(
        micro_models["micro-mtp"],
        "humaneval",
        EvalOptions(max_new_tokens=8, limit=2),
        out_dir=out,
        workers=2,
        progress=False,
    )
    assert sorted(p.name for p in out.iterdir()) == ["samples.jsonl", "summary.json"]  # no temp file left
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary) and "acceptance_rate" not in summary
    assert summary["benchmark"] == "humaneval" and summary["n_tasks"] == 2 and summary["samples_per_task"] == 1
    assert summary["model"] == str(micro_models["micro-mtp"])
    assert summary["config"]["max_new_tokens"] == 8 and summary["config"]["ks"] == [1]
    records = read_jsonl(out / "samples.jsonl")
    assert [r["task_id"] for r in records] == ["HumanEval/0", "HumanEval/1"]
    for record in records:
        assert {"task_id", "completion", "passed", "status", "result", "n_tokens", "finish_reason"} <= set(record)
        assert 1 <= record["n_tokens"] <= 8
    assert summary["mean_completion_tokens"] == pytest.approx(sum(r["n_tokens"] for r in records) / 2)
    assert summary["pass@1"] == recomputed_pass_at_k(records, 1)
    assert summary["decoding_tokens_per_second"] > 0
    assert 1 <= len(summary["examples"]) <= 3 and result.summary == summary


def test_speculative_run_equals_greedy_and_reports_acceptance(micro_models, tmp_path):
    greedy = evaluate(
        micro_models["micro-mtp"],
        "humaneval",
        EvalOptions(max_new_tokens=12, limit=2),
        out_dir=tmp_path / "greedy",
        workers=1,
        progress=False,
    )
    fast = evaluate(
        micro_models["micro-mtp"],
        "humaneval",
        EvalOptions(max_new_tokens=12, limit=2, speculative=True),
        out_dir=tmp_path / "spec",
        workers=1,
        progress=False,
    )
    assert [r["completion"] for r in fast.records] == [r["completion"] for r in greedy.records]
    assert 0.0 <= fast.summary["acceptance_rate"] <= 1.0
    assert fast.summary["generation"]["drafted"] > 0 and fast.summary["config"]["speculative"] is True


def test_pass_at_k_of_sampled_completions_matches_the_written_samples(micro_models, tmp_path, monkeypatch):
    """Generation replaced by known completions (canonical, empty, …) so pass@k is not trivially 0."""
    benchmark = load_humaneval()
    canonical = {p.prompt: p.reference for p in benchmark.problems.values()}
    calls = []

    def fake_generate(model, tokenizer, prompts, config, on_completion=None):
        calls.append(config)
        texts = []
        for i, prompt in enumerate(prompts):
            # Problem 0: 3 of 4 correct; problem 1: 1 of 4; problem 2: none.
            right = {0: i % 4 != 0, 1: i % 4 == 1, 2: False}[i // 4]
            texts.append(canonical[prompt] if right else "    return None\n")
        return (
            [generation.Completion(t, 5, "stop") for t in texts],
            generation.GenerationStats(n_tokens=5 * len(texts), seconds=0.5),
        )

    monkeypatch.setattr(generation, "generate", fake_generate)
    out = tmp_path / "sampled"
    result = evaluate(
        micro_models["micro-mtp"],
        "humaneval",
        EvalOptions(n=4, ks=[2], temperature=0.8, top_p=0.95, limit=3),
        out_dir=out,
        progress=False,
    )
    assert calls[0].temperature == 0.8 and calls[0].top_p == 0.95 and calls[0].stop == benchmark.stop
    records = read_jsonl(out / "samples.jsonl")
    summary = json.loads((out / "summary.json").read_text())
    assert len(records) == 12 and summary["samples_per_task"] == 4
    assert set(k for k in summary if k.startswith("pass@")) == {"pass@1", "pass@2"}  # 5, 10 > n
    for k in (1, 2):
        assert summary[f"pass@{k}"] == pytest.approx(recomputed_pass_at_k(records, k))
    assert summary["pass@1"] == pytest.approx((3 / 4 + 1 / 4 + 0) / 3)
    assert summary["mean_completion_tokens"] == 5 and summary["decoding_tokens_per_second"] == 120  # 60 tokens in 0.5 s
    assert result.summary["pass@2"] == summary["pass@2"]


def test_score_file_writes_results_beside_the_samples(tmp_path):
    benchmark = load_humaneval()
    chosen = list(benchmark.problems.items())[:3]
    samples = tmp_path / "samples.jsonl"
    samples.write_text(
        "".join(json.dumps({"task_id": key, "completion": c}) + "\n" for key, p in chosen for c in (p.reference, ""))
    )
    records, summary, results_path, summary_path = score_file(samples, "humaneval", ks=[2], workers=2, progress=False)
    assert results_path == tmp_path / "samples.jsonl_results.jsonl" and summary_path.is_file()
    assert [r["passed"] for r in read_jsonl(results_path)] == [True, False] * 3
    assert summary["pass@1"] == 0.5 and summary["pass@2"] == 1.0
    with pytest.raises(EvalError, match="--k 3 is larger than the 2 samples per task"):
        score_file(samples, "humaneval", ks=[3], results_path=tmp_path / "never.jsonl")
    assert not (tmp_path / "never.jsonl").exists()


@pytest.mark.slow
def test_mlflow_run_gets_pass_at_k_and_the_summary(micro_models, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    result = evaluate(
        micro_models["micro-mtp"],
        "humaneval",
        EvalOptions(max_new_tokens=4, limit=1),
        out_dir=tmp_path / "out",
        progress=False,
    )
    client = MlflowClient(uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.data.metrics["eval/humaneval/pass_at_1"] == result.summary["pass@1"]
    assert "eval/humaneval/decoding_tokens_per_second" in run.data.metrics
    assert {a.path for a in client.list_artifacts(run.info.run_id, "eval")} == {
        "eval/summary.json",
        "eval/samples.jsonl",
    }
    # An existing run (training's stage run) receives the metrics and files instead of a new run.
    existing = client.create_run(run.info.experiment_id).info.run_id
    again = evaluate(
        micro_models["micro-mtp"],
        "humaneval",
        EvalOptions(max_new_tokens=4, limit=1),
        out_dir=tmp_path / "out2",
        progress=False,
        mlflow_run_id=existing,
        tracking_uri=uri,
    )
    assert again.mlflow_run_id == existing
    assert "eval/humaneval/pass_at_1" in client.get_run(existing).data.metrics


def test_failing_mlflow_server_warns_without_its_credentials(tmp_path, monkeypatch, capsys):
    from wmtp.eval.runner import track_evaluation

    # MLflow's own defaults (7 retries with back-off, minutes in all): track_evaluation sets its limits itself.
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    summary_path = tmp_path / "summary.json"
    summary_path.write_text("{}")
    summary = {"benchmark": "humaneval", "model": "m", "pass@1": 0.5}
    # Port 9 on loopback refuses connections: the server is down, the evaluation still returns, at once.
    started = time.monotonic()
    track_evaluation(summary, [summary_path], run_id="0" * 32, uri="http://alice:s3cr3t-pw@127.0.0.1:9/?token=t0k")
    assert time.monotonic() - started < 30
    err = capsys.readouterr().err
    assert "warning: MLflow at" in err and "files only" in err
    assert "s3cr3t-pw" not in err and "t0k" not in err and "alice" not in err


# ---------------------------------------------------------------- policy vs reference loss


@pytest.fixture(scope="module")
def valid_split(micro_models, tmp_path_factory):
    from wmtp.data.index import build_index
    from wmtp.data.schema import make_record
    from wmtp.model import load_tokenizer

    rows = [
        make_record(p.prompt, "", body, f"{key}_{i}", i == 0, "humaneval", 1, True)
        for key, p in list(load_humaneval().problems.items())[:4]
        for i, body in enumerate((p.reference, "    return None\n"))
    ]
    path = tmp_path_factory.mktemp("valid") / "valid.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_index(path, load_tokenizer(micro_models["micro-mtp"]))
    return path


def test_token_loss_of_a_model_against_itself_is_zero_excess(micro_models, valid_split, tmp_path):
    from wmtp.eval.loss import token_loss_report, write_loss_report

    summary, excess = token_loss_report(
        micro_models["micro-mtp"], str(micro_models["micro-mtp"]), valid_split, batch_size=3, limit=6
    )
    assert summary["rows"] == 6 and summary["tokens"] == excess.size > 0
    assert summary["mean_excess_loss"] == pytest.approx(0.0, abs=1e-5)
    assert abs(excess).max() < 1e-4
    assert summary["mean_policy_loss"] == pytest.approx(summary["mean_reference_loss"], abs=1e-5)
    summary_path, png = write_loss_report(summary, excess, tmp_path / "loss")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(summary_path.read_text())["tokens"] == summary["tokens"]


def test_token_loss_against_the_reference_counts_response_tokens(micro_models, valid_split):
    from wmtp.data.collate import MTPCollator
    from wmtp.data.dataset import JsonlSamples
    from wmtp.eval.loss import token_loss_report
    from wmtp.model import load_tokenizer

    summary, excess = token_loss_report(
        micro_models["micro-mtp"], str(micro_models["micro-ref"]), valid_split, batch_size=8
    )
    collator = MTPCollator(load_tokenizer(micro_models["micro-mtp"]), 1, 2048)
    batch = collator([JsonlSamples(valid_split, [i])[0] for i in range(8)])
    assert summary["tokens"] == int((batch["labels"][:, :, 0] != -100).sum())
    assert summary["mean_excess_loss"] == pytest.approx(summary["mean_policy_loss"] - summary["mean_reference_loss"])
    assert abs(summary["mean_excess_loss"]) > 1e-4  # two different random models


def test_token_loss_refuses_a_reference_with_another_tokenizer(micro_models, valid_split, meta_tiny_dir, tmp_path):
    from wmtp.eval.loss import token_loss_report
    from wmtp.model.checkpoint import convert_meta

    other = convert_meta(meta_tiny_dir, tmp_path / "tiny")
    with pytest.raises(EvalError, match="vocab_size|tokenizer"):
        token_loss_report(micro_models["micro-mtp"], str(other), valid_split)


# ---------------------------------------------------------------- the spec's eval block


def test_spec_eval_block_is_on_by_default_and_checked_when_set():
    from wmtp.train.config import SpecError, load_experiment

    # HumanEval, greedy, pass@1 on all 164 at the end of every stage but the critic's; smoke cuts it.
    [baseline] = load_experiment("baseline").stages
    assert (
        baseline.eval.benchmark,
        baseline.eval.temperature,
        baseline.eval.ks,
        baseline.eval.limit,
        baseline.eval.mbpp_data,
    ) == ("humaneval", 0.0, [1], None, None)
    smoke = {stage.stage: stage.eval for stage in load_experiment("smoke").stages}
    assert smoke.pop("critic") is None and {e.limit for e in smoke.values()} == {4}
    assert load_experiment("baseline", ["eval=null"]).stages[0].eval is None
    [stage] = load_experiment("baseline", ["eval.limit=2", "eval.max_new_tokens=64"]).stages
    assert (stage.eval.benchmark, stage.eval.n, stage.eval.ks, stage.eval.limit) == ("humaneval", 1, [1], 2)
    for override, message in [
        ("eval.ks=[3]", "ks: pass@3 needs 1 ≤ k ≤ n"),
        ("eval.n=4", "temperature > 0"),
        ("eval.benchmark=mbpp", "data: MBPP needs"),
        ("eval.top_k=3", "eval.top_k: unknown key"),
    ]:
        with pytest.raises(SpecError, match=message):
            load_experiment("baseline", [override])
