"""Loading Meta releases and standard model dirs: conformance, round trip, and bad-checkpoint errors."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from wmtp.errors import CheckpointError
from wmtp.model import convert_meta, load_model, save_model, verify_model_dir
from wmtp.model.checkpoint import WEIGHTS_FILE


def expected(meta_tiny_dir):
    return torch.load(meta_tiny_dir / "tokens.pt"), torch.load(meta_tiny_dir / "expected_logits.pt")


def test_meta_release_reproduces_reference_logits(meta_tiny_dir):
    tokens, logits = expected(meta_tiny_dir)
    model = load_model(meta_tiny_dir)
    with torch.no_grad():
        diff = (model(tokens) - logits).abs().max().item()
    assert diff <= 1e-4


def test_converted_standard_dir_reproduces_reference_logits(meta_tiny_dir, tmp_path):
    tokens, logits = expected(meta_tiny_dir)
    out = convert_meta(meta_tiny_dir, tmp_path / "tiny")
    assert not any(v.is_complex() for v in load_file(out / WEIGHTS_FILE).values())
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["dtype"] == "float32" and "meta:" in metadata["source"]
    assert set(metadata["files"]) == {"configs/params.json", "safetensors/model.safetensors"}
    verify_model_dir(out)
    with torch.no_grad():
        assert (load_model(out)(tokens) - logits).abs().max().item() <= 1e-4


def test_safetensors_round_trip_is_bit_exact(micro_models, tmp_path):
    model = load_model(micro_models["micro-mtp"])
    out = save_model(model, tmp_path / "copy", source="test")
    reloaded = load_model(out)
    for (name, a), b in zip(model.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert load_model(out, dtype="bfloat16").output.weight.dtype == torch.bfloat16


def test_writing_over_an_existing_dir_is_refused(meta_tiny_dir, tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(CheckpointError, match="already exists"):
        convert_meta(meta_tiny_dir, tmp_path / "taken")


@pytest.fixture
def standard_copy(meta_tiny_dir, tmp_path):
    return convert_meta(meta_tiny_dir, tmp_path / "std")


def rewrite_weights(model_dir, edit):
    state = load_file(model_dir / WEIGHTS_FILE)
    edit(state)
    save_file(state, model_dir / WEIGHTS_FILE)


def test_missing_key_is_named(standard_copy):
    rewrite_weights(standard_copy, lambda s: s.pop("extra_heads.2.ffn_norm.weight"))
    with pytest.raises(CheckpointError, match=r"missing key 'extra_heads\.2\.ffn_norm\.weight'"):
        load_model(standard_copy)


def test_unexpected_key_is_named(standard_copy):
    rewrite_weights(standard_copy, lambda s: s.__setitem__("value_head.weight", torch.zeros(1, 64)))
    with pytest.raises(CheckpointError, match=r"unexpected key 'value_head\.weight'"):
        load_model(standard_copy)


def test_shape_mismatch_is_named(standard_copy):
    rewrite_weights(standard_copy, lambda s: s.__setitem__("output.weight", torch.zeros(255, 64)))
    with pytest.raises(CheckpointError, match=r"'output\.weight' has shape \(255, 64\)"):
        load_model(standard_copy)


def test_params_that_disagree_with_weights_are_reported(standard_copy):
    params_file = standard_copy / "configs/params.json"
    params = json.loads(params_file.read_text())
    params["n_future_tokens"] = 2
    params_file.write_text(json.dumps(params))
    with pytest.raises(CheckpointError, match="params.json and the weights"):
        load_model(standard_copy)


def test_unknown_params_key_is_named(standard_copy):
    params_file = standard_copy / "configs/params.json"
    params_file.write_text(json.dumps({**json.loads(params_file.read_text()), "n_experts": 8}))
    with pytest.raises(CheckpointError, match=r"params.json: unknown key\(s\) \['n_experts'\]"):
        load_model(standard_copy)


def test_corrupt_safetensors_names_the_file(standard_copy):
    weights = standard_copy / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot be read"):
        load_model(standard_copy)
    with pytest.raises(CheckpointError, match="SHA-256 does not match"):
        verify_model_dir(standard_copy)


def test_corrupt_consolidated_pth_names_the_file(meta_tiny_dir, tmp_path):
    broken = tmp_path / "meta"
    shutil.copytree(meta_tiny_dir, broken)
    (broken / "consolidated.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"consolidated\.pth: cannot be read"):
        load_model(broken)


def test_directory_of_the_wrong_kind_is_explained(tmp_path):
    with pytest.raises(CheckpointError, match="neither a standard model directory"):
        load_model(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "absent")
