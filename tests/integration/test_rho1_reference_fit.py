"""A Rho-1 reference must share the policy's vocabulary and tokenizer: refused in one line before anything
runs (`wmtp train` / `check_inputs`), and again when the trainer loads it; the matching micro-ref is accepted."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from wmtp.errors import WmtpError
from wmtp.train.config import SpecError, load_experiment
from wmtp_cli.main import app

MUST_SHARE = "a reference must share the policy's tokenizer"


def corpus(every: int = 1) -> list[str]:
    from wmtp.data.humaneval import humaneval_code_texts

    return list(humaneval_code_texts())[::every]


def build_reference(dest: Path, vocab_size: int, texts: list[str]) -> Path:
    """A micro reference model dir with its own SentencePiece tokenizer trained on `texts`."""
    from wmtp.model import Transformer, save_model
    from wmtp.model.micro import micro_reference_args
    from wmtp.model.tokenizer import train_sentencepiece

    tokenizer = train_sentencepiece(texts, dest.parent / f"{dest.name}-tokenizer" / "tokenizer.model", vocab_size)
    model = Transformer(micro_reference_args(vocab_size))
    model.init_weights(0)
    return save_model(model, dest, source="test reference", tokenizer_model=tokenizer)


@pytest.fixture(scope="module")
def refs(micro_models, tmp_path_factory) -> dict[str, Path]:
    """micro-mtp's tokenizer has vocab 1024 (HumanEval); these references do not fit it."""
    from wmtp.model import load_tokenizer

    root = tmp_path_factory.mktemp("bad_refs")
    built = {
        "vocab-2048": build_reference(root / "ref-2048", 2048, corpus()),
        "vocab-512": build_reference(root / "ref-512", 512, corpus()),
        # Same size, trained on half the corpus: other merges, so other pieces behind the same ids.
        "other-tokenizer": build_reference(root / "ref-other", 1024, corpus(every=2)),
    }
    policy_tok, other_tok = load_tokenizer(micro_models["micro-mtp"]), load_tokenizer(built["other-tokenizer"])
    assert other_tok.vocab_size == policy_tok.vocab_size == 1024
    probe = "def f(x):\n    return x + 1\n"
    assert other_tok.encode(probe) != policy_tok.encode(probe)  # genuinely another tokenizer
    return built


CASES = {
    "vocab-2048": "has vocab 2048 but the policy {policy} has 1024",
    "vocab-512": "has vocab 512 but the policy {policy} has 1024",
    "other-tokenizer": "has another tokenizer (tokenizer.model SHA-256",
}


@pytest.fixture
def train_file(tmp_path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("")  # only has to exist: the fit is checked before any data is read
    return path


def rho1_overrides(policy, reference, train_file) -> list[str]:
    return [
        f"model.path={policy}",
        f"rho1.reference={reference}",
        f"data.train={train_file}",
        "data.valid=null",
        "distributed.nproc_per_node=1",
    ]


@pytest.mark.parametrize("case", list(CASES))
def test_wmtp_train_refuses_a_misfit_reference_in_one_line_before_any_run_dir(
    micro_models, refs, train_file, tmp_path, case
):
    policy, reference = micro_models["micro-mtp"], refs[case]
    run_dir = tmp_path / "run"
    args = ["train", "rho1", "--run-dir", str(run_dir)]
    for o in rho1_overrides(policy, reference, train_file):
        args += ["--set", o]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line, result.output
    assert line.startswith(f"error: stage rho1: rho1.reference: {reference} ")
    assert CASES[case].format(policy=policy) in line and str(policy) in line and line.endswith(MUST_SHARE)
    assert not run_dir.exists()


@pytest.mark.parametrize("case", list(CASES))
def test_check_inputs_refuses_a_misfit_reference(micro_models, refs, train_file, case):
    from wmtp.train.runner import check_inputs

    policy, reference = micro_models["micro-mtp"], refs[case]
    experiment = load_experiment("rho1", rho1_overrides(policy, reference, train_file))
    with pytest.raises(SpecError, match=f"^stage rho1: rho1.reference: {re.escape(str(reference))} .*{MUST_SHARE}$"):
        check_inputs(experiment)


@pytest.mark.parametrize("case", list(CASES))
def test_the_trainer_side_load_refuses_a_misfit_reference(micro_models, refs, train_file, case):
    """The safety net for `python -m wmtp.train` and direct callers: refused before any weight is loaded."""
    from wmtp.model.reference import load_reference_model
    from wmtp.train.objectives import build_objective

    policy, reference = micro_models["micro-mtp"], refs[case]
    experiment = load_experiment("rho1", rho1_overrides(policy, reference, train_file))
    with pytest.raises(WmtpError, match=f"^rho1.reference: {re.escape(str(reference))} .*{MUST_SHARE}$"):
        build_objective(experiment.stages[0], torch.device("cpu"), {})
    with pytest.raises(WmtpError, match=re.escape(CASES[case].format(policy=policy))):
        load_reference_model(str(reference), "cpu", policy=policy)


def test_the_matching_micro_ref_is_accepted(micro_models, train_file):
    from wmtp.model import Transformer
    from wmtp.train.objectives import Rho1Objective, build_objective
    from wmtp.train.runner import check_inputs

    experiment = load_experiment(
        "rho1", rho1_overrides(micro_models["micro-mtp"], micro_models["micro-ref"], train_file)
    )
    check_inputs(experiment)
    objective = build_objective(experiment.stages[0], torch.device("cpu"), {})
    assert isinstance(objective, Rho1Objective) and isinstance(objective.reference, Transformer)


# ---------------------------------------------------------------- hf: references (local dirs only)


def write_hf_reference(dest: Path, vocab_size: int, tokenizer_model: Path) -> Path:
    """A tiny Llama causal LM with a slow-tokenizer dir built from our SentencePiece model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    LlamaForCausalLM(config).save_pretrained(dest)
    shutil.copyfile(tokenizer_model, dest / "tokenizer.model")
    (dest / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    return dest


@pytest.fixture(scope="module")
def hf_refs(micro_models, refs, tmp_path_factory) -> dict[str, str]:
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("hf_refs")
    sp = "tokenizer/tokenizer.model"
    return {
        "match": "hf:" + str(write_hf_reference(root / "match", 1024, micro_models["micro-mtp"] / sp)),
        "vocab-2048": "hf:" + str(write_hf_reference(root / "v2048", 2048, refs["vocab-2048"] / sp)),
        "other-tokenizer": "hf:" + str(write_hf_reference(root / "other", 1024, refs["other-tokenizer"] / sp)),
    }


def test_hf_references_are_checked_by_config_vocab_and_probe_ids(micro_models, hf_refs, train_file):
    from wmtp.model.reference import HFCausalLM, load_reference_model
    from wmtp.train.runner import check_inputs

    policy = micro_models["micro-mtp"]
    check_inputs(load_experiment("rho1", rho1_overrides(policy, hf_refs["match"], train_file)))
    assert isinstance(load_reference_model(hf_refs["match"], "cpu", policy=policy), HFCausalLM)
    expected = {
        "vocab-2048": f"has vocab 2048 but the policy {policy} has 1024",
        "other-tokenizer": "'s tokenizer encodes a probe text to other ids than the policy",
    }
    for case, fragment in expected.items():
        with pytest.raises(SpecError, match=f"^stage rho1: rho1.reference: {re.escape(hf_refs[case])}") as info:
            check_inputs(load_experiment("rho1", rho1_overrides(policy, hf_refs[case], train_file)))
        assert fragment in str(info.value) and str(info.value).endswith(MUST_SHARE)
        with pytest.raises(WmtpError, match=MUST_SHARE):
            load_reference_model(hf_refs[case], "cpu", policy=policy)
