"""The micro model and its tokenizer: standard layout, deterministic, trained on real code."""

import json

import torch

from wmtp.model import load_model, load_tokenizer


def test_micro_dirs_have_the_standard_layout(micro_models):
    for path in micro_models.values():
        for rel in ("configs/params.json", "safetensors/model.safetensors", "tokenizer/tokenizer.model", "metadata.json"):
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

    again = build_micro_models(tmp_path, seed=0)["micro-mtp"]
    a, b = load_model(micro_models["micro-mtp"]), load_model(again)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
