"""`wmtp model pycode`'s pieces that need no training: model shape, tokenizer text, spec overrides, prompts."""

from pathlib import Path

import pytest

from wmtp.data.pycode import split_of
from wmtp.model.micro import trunk_heavy_mtp_args
from wmtp.train.config import load_experiment
from wmtp.train.pycode_model import PycodeOptions, chunk_text, train_split_files, training_overrides


def test_trunk_heavy_args_default_to_12_trunk_and_4_head_blocks_of_width_256():
    args = trunk_heavy_mtp_args(4096)
    assert (args.n_trunk_layers, args.n_future_tokens, args.dim) == (12, 4, 256)
    assert args.n_heads % args.n_kv_heads == 0 and args.n_kv_heads < args.n_heads  # GQA
    tiny = trunk_heavy_mtp_args(512, dim=64, trunk_layers=2, head_layers=2)
    assert (tiny.n_layers, tiny.n_future_tokens, tiny.dim) == (4, 2, 64)


def test_chunks_cut_after_blank_lines_and_keep_the_whole_text():
    text = "".join(f"def f{i}():\n    return {i}\n\n" for i in range(500))
    pieces = chunk_text(text, size=200)
    assert "".join(pieces) == text
    assert len(pieces) > 10 and all(piece.endswith("\n\n") for piece in pieces[:-1])


def test_the_tokenizer_reads_train_split_files_only():
    selection, files = train_split_files(Path(__file__).resolve().parents[2] / "wmtp", None)
    assert files and all(split_of(rel) == "train" for rel, _ in files)
    assert len(files) < len(selection.files)  # some files of this tree fall in valid/test and are left out


def test_the_builds_overrides_resolve_jobs_pycode_yaml(tmp_path):
    options = PycodeOptions(data_dir=tmp_path / "data", steps=7, overrides=("train.batch_size=2",))
    spec = load_experiment("pycode", training_overrides(options, tmp_path / "init")).stages[0]
    assert spec.objective == "baseline" and spec.eval is None
    assert spec.data.sampling.strategy == "correct_only"  # every pycode record is correct
    assert spec.model.path == str(tmp_path / "init")
    assert spec.data.train == str(tmp_path / "data" / "processed" / "train.jsonl")
    assert (spec.train.max_steps, spec.train.batch_size, spec.launch_world_size()) == (7, 2, 1)


def test_options_identity_leaves_out_the_destination_and_threads(tmp_path):
    a = PycodeOptions(out=tmp_path / "a", threads=1).identity()
    assert a == PycodeOptions(out=tmp_path / "b", threads=2).identity()
    assert a != PycodeOptions(steps=a["steps"] + 1).identity()


@pytest.mark.parametrize("shipped", ["jobs/pycode.yaml"])
def test_wmtp_train_pycode_resolves_as_shipped(shipped):
    spec = load_experiment(shipped).stages[0]
    assert spec.model.path == "storage/models_v2/pycode-mtp"
    assert spec.data.max_length <= 1024 and spec.train.max_steps == PycodeOptions().steps
