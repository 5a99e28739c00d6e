"""Loading Meta releases and standard model dirs: conformance, round trip, and bad-checkpoint errors."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from wmtp.errors import CheckpointError
from wmtp.model import convert_meta, load_model, load_tokenizer, save_model, verify_model_dir
from wmtp.model.checkpoint import TOKENIZER_FILE, WEIGHTS_FILE, sha256_file


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


def refresh_metadata(model_dir):
    """Record the files' new sizes and hashes, as a writer that got the content wrong would."""
    meta_file = model_dir / "metadata.json"
    metadata = json.loads(meta_file.read_text())
    for rel in metadata["files"]:
        path = model_dir / rel
        metadata["files"][rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    meta_file.write_text(json.dumps(metadata))


def rewrite_weights(model_dir, edit):
    state = load_file(model_dir / WEIGHTS_FILE)
    edit(state)
    save_file(state, model_dir / WEIGHTS_FILE)
    refresh_metadata(model_dir)


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
    refresh_metadata(standard_copy)
    with pytest.raises(CheckpointError, match="params.json and the weights"):
        load_model(standard_copy)


def test_unknown_params_key_is_named(standard_copy):
    params_file = standard_copy / "configs/params.json"
    params_file.write_text(json.dumps({**json.loads(params_file.read_text()), "n_experts": 8}))
    refresh_metadata(standard_copy)
    with pytest.raises(CheckpointError, match=r"params.json: unknown key\(s\) \['n_experts'\]"):
        load_model(standard_copy)


def test_corrupt_safetensors_names_the_file(standard_copy):
    weights = standard_copy / WEIGHTS_FILE
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=rf"model\.safetensors: 1000 bytes, metadata.json records {size}"):
        load_model(standard_copy)
    with pytest.raises(CheckpointError, match="metadata.json records"):
        verify_model_dir(standard_copy)
    (standard_copy / "metadata.json").unlink()  # nothing to check against: the reader itself must object
    with (
        pytest.warns(UserWarning, match="no metadata.json"),
        pytest.raises(CheckpointError, match=r"model\.safetensors: cannot be read"),
    ):
        load_model(standard_copy)


def flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # inside the last tensor's data: still a readable safetensors file of the same size
    path.write_bytes(bytes(data))


def test_flipped_byte_is_caught_when_verifying(standard_copy):
    weights = standard_copy / WEIGHTS_FILE
    recorded = json.loads((standard_copy / "metadata.json").read_text())["files"][WEIGHTS_FILE]["sha256"]
    flip_last_byte(weights)
    load_model(standard_copy)  # same size: the cheap check cannot see it
    with pytest.raises(CheckpointError) as caught:
        load_model(standard_copy, verify=True)
    message = str(caught.value)
    assert message.startswith(f"{weights}: SHA-256 {sha256_file(weights)} does not match")
    assert recorded in message and "\n" not in message
    with pytest.raises(CheckpointError, match="does not match metadata.json"):
        verify_model_dir(standard_copy)


def test_size_is_always_checked_against_metadata(standard_copy):
    weights = standard_copy / WEIGHTS_FILE
    size = weights.stat().st_size
    with open(weights, "ab") as f:
        f.write(b"\0")
    with pytest.raises(CheckpointError, match=rf"{size + 1} bytes, metadata.json records {size} \(corrupt"):
        load_model(standard_copy)
    weights.unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors: listed in metadata.json but missing"):
        load_model(standard_copy)


def test_standard_dir_without_metadata_loads_with_a_warning_but_cannot_be_verified(standard_copy):
    (standard_copy / "metadata.json").unlink()
    with pytest.warns(UserWarning, match="no metadata.json; file sizes and hashes not checked"):
        load_model(standard_copy)
    with pytest.raises(CheckpointError, match=r"metadata\.json: not found, so nothing can be verified"):
        load_model(standard_copy, verify=True)


def test_meta_release_cannot_be_verified(meta_tiny_dir):
    with pytest.raises(CheckpointError, match="records no SHA-256 to verify against"):
        load_model(meta_tiny_dir, verify=True)


def test_dtype_strings_include_float64(meta_tiny_dir):
    assert load_model(meta_tiny_dir, dtype="float64").output.weight.dtype == torch.float64
    with pytest.raises(CheckpointError, match=r"dtype 'float8' is not one of"):
        load_model(meta_tiny_dir, dtype="float8")


@pytest.fixture
def meta_with_tokenizer(meta_tiny_dir, micro_models, tmp_path):
    """A copy of the Meta fixture with the micro model's tokenizer.model next to it, as Meta ships one."""
    release = tmp_path / "release"
    shutil.copytree(meta_tiny_dir, release)
    shutil.copyfile(micro_models["micro-mtp"] / TOKENIZER_FILE, release / "tokenizer.model")
    return release


@pytest.mark.parametrize("where", ["inside", "parent"])
def test_convert_meta_copies_and_hashes_the_tokenizer(meta_with_tokenizer, tmp_path, where):
    if where == "parent":  # Llama-style downloads keep tokenizer.model beside the weights folder
        (meta_with_tokenizer / "tokenizer.model").rename(tmp_path / "tokenizer.model")
    original = tmp_path / "tokenizer.model" if where == "parent" else meta_with_tokenizer / "tokenizer.model"
    out = convert_meta(meta_with_tokenizer, tmp_path / "std")
    assert (out / TOKENIZER_FILE).read_bytes() == original.read_bytes()
    files = json.loads((out / "metadata.json").read_text())["files"]
    assert files[TOKENIZER_FILE] == {"sha256": sha256_file(original), "size": original.stat().st_size}
    verify_model_dir(out)
    assert load_tokenizer(out).decode(load_tokenizer(out).encode("def f(): pass")) == "def f(): pass"


def test_convert_meta_with_a_missing_tokenizer_path_is_refused(meta_tiny_dir, tmp_path):
    with pytest.raises(CheckpointError, match=r"absent\.model: tokenizer file not found"):
        convert_meta(meta_tiny_dir, tmp_path / "std", tokenizer_model=tmp_path / "absent.model")
    assert not (tmp_path / "std").exists()


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
