"""`wmtp model export-hf` / `import-hf`: our next-token path as a transformers Llama and back.

Tolerance: both sides compute the same float32 function but in another order (HF rotates halves
where we multiply complex pairs, different attention and matmul kernels), so logits differ only by
float32 rounding accumulated over 3 blocks — observed ~4e-7 on logits of magnitude ~1; 1e-4 is that
rounding with ample margin, yet far below any real mistake (a wrong RoPE permutation or a swapped
weight moves logits by ~1e-1). Weights that are only renamed or permuted are compared exactly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.integration.conftest import humaneval_problems
from wmtp_cli.main import app

pytest.importorskip("transformers")

runner = CliRunner()
LOGIT_ATOL = 1e-4  # float32 rounding of a reordered computation; see the module docstring
EDGE_TEXTS = [
    "",
    " ",
    "\n",
    "  x",
    "x  ",
    "  leading spaces\n\tand tabs  ",
    "日本語 ünïcode 🙂",
    "<s> a literal </s>",
    "def f():\n    return 1\n\n\n",
]


@pytest.fixture(scope="module")
def exported(micro_models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hf") / "micro-llama"
    result = runner.invoke(app, ["model", "export-hf", str(micro_models["micro-mtp"]), str(out)])
    assert result.exit_code == 0, result.output
    assert "LlamaForCausalLM, 3 layers = 2 trunk + head 1" in result.output
    return out


@pytest.fixture(scope="module")
def hf_model(exported):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(exported, dtype="float32").eval()


def test_tokenizer_encodes_and_decodes_exactly_our_ids(micro_models, exported):
    from transformers import AutoTokenizer

    from wmtp.model import load_tokenizer

    ours, theirs = load_tokenizer(micro_models["micro-mtp"]), AutoTokenizer.from_pretrained(exported)
    assert (theirs.bos_token_id, theirs.eos_token_id) == (ours.bos_id, ours.eos_id)
    texts = EDGE_TEXTS + [p[k] for p in humaneval_problems(164) for k in ("prompt", "canonical_solution", "test")]
    for text in texts:
        ids = ours.encode(text, bos=True)
        assert theirs(text)["input_ids"] == ids, repr(text[:60])
        assert theirs.decode(ids, skip_special_tokens=True) == ours.decode(ids), repr(text[:60])


def test_hf_logits_equal_our_head_1(micro_models, hf_model, one_torch_thread):
    import torch

    from wmtp.model import load_model, load_tokenizer

    ours, tokenizer = load_model(micro_models["micro-mtp"], dtype="float32"), load_tokenizer(micro_models["micro-mtp"])
    for problem in humaneval_problems(3):
        ids = torch.tensor([tokenizer.encode(problem["prompt"], bos=True)])
        with torch.no_grad():
            expected = ours(ids, n_heads=1)[:, :, 0]
            got = hf_model(input_ids=ids).logits.float()
        torch.testing.assert_close(got, expected, atol=LOGIT_ATOL, rtol=0)


def test_hf_greedy_generate_equals_our_greedy_decoding(micro_models, exported, hf_model, one_torch_thread):
    import torch
    from transformers import AutoTokenizer

    from wmtp.eval.generation import GenerationConfig, completion_text, generate
    from wmtp.model import load_model, load_tokenizer

    ours, tokenizer = load_model(micro_models["micro-mtp"], dtype="float32"), load_tokenizer(micro_models["micro-mtp"])
    hf_tokenizer = AutoTokenizer.from_pretrained(exported)
    prompts = [p["prompt"] for p in humaneval_problems(3)]
    completions, _ = generate(ours, tokenizer, prompts, GenerationConfig(max_new_tokens=16, temperature=0.0))
    assert sum(c.n_tokens for c in completions) > 0  # something to compare, not three empty completions
    for prompt, completion in zip(prompts, completions):
        ids = hf_tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=16)
        new = out[0, ids.shape[1] :].tolist()
        if tokenizer.eos_id in new:  # ours stops at eos without keeping it
            new = new[: new.index(tokenizer.eos_id)]
        prompt_ids = ids[0].tolist()
        assert len(new) == completion.n_tokens
        assert completion_text(tokenizer, prompt_ids, tokenizer.decode(prompt_ids), new) == completion.text


def test_import_back_gives_hf_logits_on_head_1_and_copied_heads(
    micro_models, exported, hf_model, tmp_path, one_torch_thread
):
    import torch

    from wmtp.model import load_model, load_tokenizer

    out = tmp_path / "mtp"
    result = runner.invoke(app, ["model", "import-hf", str(exported), str(out), "--n-future-tokens", "4"])
    assert result.exit_code == 0, result.output
    assert "2 trunk blocks + 4 heads" in result.output
    imported = load_model(out, verify=True)
    original = load_model(micro_models["micro-mtp"])
    assert imported.args.to_params() == original.args.to_params()
    state, before = imported.state_dict(), original.state_dict()
    for key, value in state.items():  # renames and a permutation and its inverse: exact
        if not key.startswith("extra_heads."):  # the original's extra heads were trained apart; not copied
            assert torch.equal(value, before[key]), key
    for head in imported.extra_heads:
        for (name, value), (_, last) in zip(head.state_dict().items(), imported.layers[-1].state_dict().items()):
            assert torch.equal(value, last), name
    tokenizer = load_tokenizer(out)
    ids = torch.tensor([tokenizer.encode(humaneval_problems(1)[0]["prompt"], bos=True)])
    with torch.no_grad():
        torch.testing.assert_close(
            imported(ids)[:, :, 0], hf_model(input_ids=ids).logits.float(), atol=LOGIT_ATOL, rtol=0
        )


@pytest.mark.parametrize(
    "field, value",
    [
        ("model_type", "mistral"),
        ("tie_word_embeddings", True),
        ("rope_scaling", {"rope_type": "linear", "factor": 2.0}),
    ],
)
def test_import_refuses_what_we_do_not_implement_in_one_line(exported, tmp_path, field, value):
    bad = tmp_path / "bad"
    shutil.copytree(exported, bad)
    config = json.loads((bad / "config.json").read_text())
    config[field] = value
    (bad / "config.json").write_text(json.dumps(config))
    result = runner.invoke(app, ["model", "import-hf", str(bad), str(tmp_path / "out")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "config.json" in lines[0] and f"{field}=" in lines[0], result.output
    assert not (tmp_path / "out").exists()
