"""`wmtp eval run | score | loss` through Typer's CliRunner: exit codes, printed summaries, files, one-line errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests.unit.test_eval_benchmarks import MBPP_ROWS
from wmtp.eval.benchmarks import load_humaneval
from wmtp_cli.main import app

pytestmark = pytest.mark.usefixtures("one_torch_thread", "no_tracking_env")

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, ["eval", *map(str, args)])


def test_eval_run_prints_pass_at_k_and_where_the_files_went(micro_models, tmp_path):
    out = tmp_path / "run"
    result = invoke(
        "run",
        micro_models["micro-mtp"],
        "--benchmark",
        "humaneval",
        "--limit",
        2,
        "--max-new-tokens",
        8,
        "--out",
        out,
        "--workers",
        2,
    )
    assert result.exit_code == 0, result.output
    assert "humaneval: 2 problems × 1 samples" in result.output
    assert "pass@1" in result.output and "tokens/s decoding" in result.output
    assert f"samples: {out / 'samples.jsonl'}" in result.output and f"summary: {out / 'summary.json'}" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_tasks"] == 2 and len((out / "samples.jsonl").read_text().splitlines()) == 2


def test_eval_run_on_mbpp_with_speculative_decoding(micro_models, tmp_path):
    data = tmp_path / "mbpp.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in MBPP_ROWS))
    out = tmp_path / "mbpp"
    result = invoke(
        "run",
        micro_models["micro-mtp"],
        "-b",
        "mbpp",
        "--data",
        data,
        "--limit",
        1,
        "--max-new-tokens",
        6,
        "--speculative",
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    assert "(speculative)" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["benchmark"] == "mbpp" and summary["config"]["stop"] == ["[DONE]"]
    assert [json.loads(line)["task_id"] for line in (out / "samples.jsonl").read_text().splitlines()] == [11]


def test_eval_run_speculative_sampling_at_a_temperature(micro_models, tmp_path):
    """pass@k's sampling (--n, --temperature, --top-p) runs speculatively: same options, acceptance reported."""
    out = tmp_path / "spec-sampled"
    result = invoke(
        "run",
        micro_models["micro-mtp"],
        "-b",
        "humaneval",
        "--limit",
        2,
        "--n",
        3,
        "--k",
        "1,2",
        "--temperature",
        0.8,
        "--top-p",
        0.95,
        "--max-new-tokens",
        8,
        "--speculative",
        "--out",
        out,
        "--workers",
        2,
    )
    assert result.exit_code == 0, result.output
    assert "humaneval: 2 problems × 3 samples" in result.output
    assert "pass@2" in result.output and "(speculative)" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["speculative"] is True and summary["config"]["temperature"] == 0.8
    assert summary["generation"]["drafted"] > 0 and 0 <= summary["acceptance_rate"] <= 1
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6 and all(1 <= s["n_tokens"] <= 8 for s in samples if s["finish_reason"] != "eos")


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--n", "2", "--k", "1,5", "--temperature", "0.8"],
            "--k: pass@5 needs 1 ≤ k ≤ n = 2 samples per problem; raise n or drop 5 (got [1, 5])",
        ),
        (["--n", "4"], "--n: 4 greedy samples would all be the same completion; set temperature > 0"),
        (["--top-p", "1.5"], "--top-p: Input should be less than or equal to 1 (got 1.5)"),
        (["--k", "x"], "expected comma-separated integers"),
    ],
)
def test_eval_run_refuses_bad_options_in_one_line(micro_models, tmp_path, args, message):
    result = invoke("run", micro_models["micro-mtp"], "-b", "humaneval", "--out", tmp_path / "out", *args)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_eval_run_names_a_missing_model_or_benchmark(tmp_path):
    missing = invoke("run", tmp_path / "nothing", "-b", "humaneval", "--out", tmp_path / "o")
    assert missing.exit_code == 2 and "model directory not found" in missing.output
    unknown = invoke("run", tmp_path, "-b", "apps")
    assert unknown.exit_code == 2 and "expected one of humaneval, mbpp" in unknown.output


def test_eval_score_canonical_solutions_pass(tmp_path):
    problems = list(load_humaneval().problems.items())[:20]
    samples = tmp_path / "canonical.jsonl"
    samples.write_text("".join(json.dumps({"task_id": k, "completion": p.reference}) + "\n" for k, p in problems))
    result = invoke("score", samples, "--benchmark", "humaneval", "--workers", 2, "--timeout", 5)
    assert result.exit_code == 0, result.output
    assert "pass@1   1.0000" in result.output and "passed 20" in result.output
    results = tmp_path / "canonical.jsonl_results.jsonl"
    assert f"results: {results}" in result.output
    assert all(json.loads(line)["passed"] for line in results.read_text().splitlines())
    assert json.loads((tmp_path / "canonical.jsonl_summary.json").read_text())["pass@1"] == 1.0


def test_eval_score_with_k_above_the_samples_per_task_is_refused(tmp_path):
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"task_id": "HumanEval/0", "completion": ""}) + "\n")
    result = invoke("score", samples, "-b", "humaneval", "--k", "2")
    assert result.exit_code == 2 and "--k 2 is larger than the 1 samples per task" in result.output
    # eval score has no --n: the file decides how many samples a task has
    assert "(lower --k, or score a file with more samples per task)" in result.output and "--n" not in result.output
    assert not (tmp_path / "s.jsonl_results.jsonl").exists()


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", ":2: not valid JSON"),
        ('{"task_id": "HumanEval/0"}', ":2: missing key 'completion'"),
        ('{"task_id": "HumanEval/999", "completion": ""}', ":2: task_id 'HumanEval/999' is not a humaneval task"),
        ('{"task_id": "HumanEval/0", "completion": 3}', ":2: 'completion' must be a string"),
    ],
)
def test_eval_score_bad_line_is_one_message_with_file_and_line(tmp_path, line, message):
    samples = tmp_path / "bad.jsonl"
    samples.write_text(json.dumps({"task_id": "HumanEval/0", "completion": ""}) + "\n" + line + "\n")
    result = invoke("score", samples, "-b", "humaneval")
    assert result.exit_code == 2
    assert f"{samples}{message}" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_eval_loss_of_a_model_against_itself(micro_models, tmp_path):
    from wmtp.data.index import build_index
    from wmtp.data.schema import make_record
    from wmtp.model import load_tokenizer

    rows = [
        make_record(p.prompt, "", p.reference, k, True, "humaneval", 1, True)
        for k, p in list(load_humaneval().problems.items())[:3]
    ]
    data = tmp_path / "valid.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_index(data, load_tokenizer(micro_models["micro-mtp"]))
    out = tmp_path / "loss"
    model = micro_models["micro-mtp"]
    result = invoke("loss", model, "--reference", model, "--data", data, "--batch-size", 2, "--out", out)
    assert result.exit_code == 0, result.output
    assert "mean excess loss     0.0000" in result.output and "mean policy loss" in result.output
    assert (out / "excess_loss_hist.png").stat().st_size > 0
    summary = json.loads((out / "loss_summary.json").read_text())
    assert summary["rows"] == 3 and summary["mean_excess_loss"] == pytest.approx(0.0, abs=1e-5)


def test_eval_loss_without_an_index_names_the_fix(micro_models, tmp_path):
    data = tmp_path / "valid.jsonl"
    data.write_text("{}\n")
    result = invoke("loss", micro_models["micro-mtp"], "--reference", micro_models["micro-ref"], "--data", data)
    assert result.exit_code == 2 and "wmtp data index" in result.output and "Traceback" not in result.output
