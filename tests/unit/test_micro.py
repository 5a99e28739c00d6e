"""The micro model and its tokenizer: standard layout, deterministic, trained on real code."""

import json

import torch

from wmtp.data.humaneval import humaneval_code_texts
from wmtp.model import load_model, load_tokenizer


def test_micro_dirs_have_the_standard_layout(micro_models):
    for path in micro_models.values():
        for rel in (
            "configs/params.json",
            "safetensors/model.safetensors",
            "tokenizer/tokenizer.model",
            "metadata.json",
        ):
            assert (path / rel).is_file(), rel
        metadata = json.loads((path / "metadata.json").read_text())
        assert "tokenizer/tokenizer.model" in metadata["files"]
    assert load_model(micro_models["micro-mtp"]).n_future_tokens == 4
    assert load_model(micro_models["micro-ref"]).n_future_tokens == 1


def test_tokenizer_round_trips_code_and_has_special_ids(micro_models):
    tok = load_tokenizer(micro_models["micro-mtp"])
    code = 'def f(x):\n\tif x > 2:\n        return "ü" * x  # done\n'
    ids = tok.encode(code, bos=True, eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids) == code
    assert len({tok.bos_id, tok.eos_id, tok.pad_id}) == 3
    assert len(tok.encode("    return ")) < len("    return ")  # learned merges, not bytes


def test_same_seed_gives_the_same_weights(micro_models, tmp_path):
    from wmtp.model.micro import build_micro_models

    again = build_micro_models(tmp_path, humaneval_code_texts(), seed=0)["micro-mtp"]
    a, b = load_model(micro_models["micro-mtp"]), load_model(again)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_second_run_is_refused_before_any_work_and_leaves_nothing(micro_models, monkeypatch):
    import pytest

    from wmtp.errors import CheckpointError
    from wmtp.model import micro

    out = micro_models["micro-mtp"].parent
    before = sorted(p.name for p in out.iterdir())
    monkeypatch.setattr(micro, "train_sentencepiece", lambda *a, **k: pytest.fail("trained a tokenizer"))
    with pytest.raises(CheckpointError, match=r"micro-mtp: already exists"):
        micro.build_micro_models(out, humaneval_code_texts(), seed=0)
    assert sorted(p.name for p in out.iterdir()) == before == ["micro-mtp", "micro-ref"]


def test_a_failure_midway_leaves_no_half_built_pair(micro_models, tmp_path, monkeypatch):
    import shutil

    import pytest

    from wmtp.model import micro

    def copy_tokenizer(texts, out_file, vocab_size):  # the real one takes seconds; its output is what matters
        out_file.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(micro_models["micro-mtp"] / "tokenizer/tokenizer.model", out_file)
        return out_file

    real_save = micro.save_model

    def save_then_fail(model, dest, **kw):
        if dest.name == "micro-ref":
            raise OSError("disk full")
        return real_save(model, dest, **kw)

    monkeypatch.setattr(micro, "train_sentencepiece", copy_tokenizer)
    monkeypatch.setattr(micro, "save_model", save_then_fail)
    with pytest.raises(OSError, match="disk full"):
        micro.build_micro_models(tmp_path / "models", humaneval_code_texts(), seed=0)
    assert list((tmp_path / "models").iterdir()) == []  # no micro-mtp alone, no temporary tokenizer
