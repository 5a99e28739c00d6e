"""`wmtp` top level and `wmtp model …` through Typer's CliRunner."""

import shutil

from typer.testing import CliRunner

from wmtp_cli.main import app

runner = CliRunner()


def test_help_lists_command_groups_and_version():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "model" in result.output
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.output.startswith("wmtp ")


def test_convert_meta_then_verify(meta_tiny_dir, tmp_path):
    result = runner.invoke(app, ["model", "convert-meta", str(meta_tiny_dir), str(tmp_path / "tiny")])
    assert result.exit_code == 0, result.output
    verify = runner.invoke(app, ["model", "verify", str(tmp_path / "tiny")])
    assert verify.exit_code == 0 and "4 heads" in verify.output


def test_bad_checkpoint_is_one_line_without_traceback(meta_tiny_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(meta_tiny_dir, broken)
    (broken / "consolidated.pth").write_bytes(b"garbage")
    result = runner.invoke(app, ["model", "convert-meta", str(broken), str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "consolidated.pth: cannot be read" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_verify_catches_a_flipped_byte_and_says_head_in_the_singular(micro_models, tmp_path):
    ok = runner.invoke(app, ["model", "verify", str(micro_models["micro-ref"])])
    assert ok.exit_code == 0 and ok.output.endswith(" parameters, 1 head)\n"), ok.output
    copy = tmp_path / "copy"
    shutil.copytree(micro_models["micro-mtp"], copy)
    weights = copy / "safetensors" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    bad = runner.invoke(app, ["model", "verify", str(copy)])
    assert bad.exit_code == 2
    assert bad.output.startswith(f"error: {weights}: SHA-256 ") and "does not match metadata.json" in bad.output
    assert len(bad.output.strip().splitlines()) == 1


def test_convert_meta_with_a_bad_tokenizer_path_is_one_line(meta_tiny_dir, tmp_path):
    result = runner.invoke(
        app,
        [
            "model",
            "convert-meta",
            str(meta_tiny_dir),
            str(tmp_path / "out"),
            "--tokenizer",
            str(tmp_path / "nope.model"),
        ],
    )
    assert result.exit_code == 2
    assert result.output == f"error: {tmp_path / 'nope.model'}: tokenizer file not found\n"
    assert not (tmp_path / "out").exists()


def test_convert_meta_warns_when_no_tokenizer_is_found(meta_tiny_dir, tmp_path):
    result = runner.invoke(app, ["model", "convert-meta", str(meta_tiny_dir), str(tmp_path / "out")])
    assert result.exit_code == 0
    assert result.output.splitlines() == [
        f"wrote {tmp_path / 'out'}",
        f"warning: no tokenizer.model in {meta_tiny_dir} or its parent; {tmp_path / 'out'} has no "
        "tokenizer/tokenizer.model (pass --tokenizer FILE to include one)",
    ]


def test_convert_meta_with_a_tokenizer_says_nothing_more(meta_tiny_dir, micro_models, tmp_path):
    tokenizer = micro_models["micro-mtp"] / "tokenizer" / "tokenizer.model"
    result = runner.invoke(
        app, ["model", "convert-meta", str(meta_tiny_dir), str(tmp_path / "out"), "--tokenizer", str(tokenizer)]
    )
    assert result.exit_code == 0 and result.output == f"wrote {tmp_path / 'out'}\n"
    assert (tmp_path / "out" / "tokenizer" / "tokenizer.model").read_bytes() == tokenizer.read_bytes()


def test_micro_builds_both_models_then_refuses_to_overwrite(tmp_path):
    result = runner.invoke(app, ["model", "micro", "--out", str(tmp_path / "models")])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"wrote micro-mtp: {tmp_path / 'models' / 'micro-mtp'}",
        f"wrote micro-ref: {tmp_path / 'models' / 'micro-ref'}",
    ]
    # What it is doing, on stderr (a log shows it while the tokenizer trains).
    assert result.stderr.splitlines() == [
        "training a SentencePiece BPE tokenizer (vocab 1024) on HumanEval's code",
        "initialising micro-mtp (6 blocks, dim 128, 4 heads, seed 0) and saving it",
        "initialising micro-ref (3 blocks, dim 128, 1 head, seed 0) and saving it",
    ]
    again = runner.invoke(app, ["model", "micro", "--out", str(tmp_path / "models")])
    assert again.exit_code == 2 and "micro-mtp: already exists" in again.output
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["micro-mtp", "micro-ref"]


def test_info_prints_params_and_parameter_count(micro_models, meta_tiny_dir):
    result = runner.invoke(app, ["model", "info", str(micro_models["micro-mtp"])])
    assert result.exit_code == 0, result.output
    rows = dict(line.split(None, 1) for line in result.output.splitlines())
    assert rows["n_future_tokens"] == "4" and rows["dim"] == "128" and rows["vocab_size"] == "1024"
    assert int(rows["parameters"].replace(",", "")) > 0
    meta = runner.invoke(app, ["model", "info", str(meta_tiny_dir)])
    assert meta.exit_code == 0 and "n_future_tokens" in meta.output


def test_try_step_prints_a_falling_loss(micro_models):
    result = runner.invoke(app, ["model", "try-step", str(micro_models["micro-mtp"]), "--steps", "3"])
    assert result.exit_code == 0, result.output
    losses = [float(line.split("loss ")[1].split()[0]) for line in result.output.splitlines()]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert all(
        line.count("per head [") == 1 and len(line.split("[")[1].split()) == 4 for line in result.output.splitlines()
    )
