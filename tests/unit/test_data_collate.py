"""MTPCollator: no prompt token ever carries a label, H shifted label rows, padding, truncation policy."""

from __future__ import annotations

import random

import pytest
import torch

from wmtp.data.collate import IGNORE_INDEX, MTPCollator, truncate
from wmtp.data.schema import DataError
from wmtp.data.template import RESPONSE_MARKER, encode_prompt, encode_response, format_prompt


@pytest.fixture(scope="module")
def tokenizer(micro_models):
    from wmtp.model import load_tokenizer

    return load_tokenizer(micro_models["micro-mtp"])


def record(instruction: str, output: str, input_text: str = "", correct: bool = True, task_id: str = "t") -> dict:
    return {
        "instruction": instruction,
        "input": input_text,
        "output": output,
        "task_id": task_id,
        "is_correct": correct,
        "metadata": {"source": "unit", "difficulty": 1, "has_tests": False},
    }


RECORDS = [
    record("Add two numbers.", "def add(a, b):\n    return a + b\n", task_id="a"),
    record(
        "Reverse a list.",
        "def rev(xs):\n    return xs[::-1]\n",
        input_text="rev([1, 2]) == [2, 1]",
        correct=False,
        task_id="b",
    ),
    record("Return one.", "    return 1\n", task_id="c"),
]


def test_batch_shapes_and_types(tokenizer):
    batch = MTPCollator(tokenizer, n_future_tokens=4, max_length=512)(RECORDS)
    B, S = batch["input_ids"].shape
    assert B == 3 and batch["labels"].shape == (B, S, 4)
    assert batch["input_ids"].dtype == batch["labels"].dtype == torch.long
    assert batch["attention_mask"].dtype == batch["response_mask"].dtype == torch.bool
    assert batch["is_correct"].dtype == torch.float32 and batch["is_correct"].tolist() == [1.0, 0.0, 1.0]
    assert batch["task_ids"] == ["a", "b", "c"]


def test_labels_are_shifted_response_tokens_and_nothing_else(tokenizer):
    n_heads = 4
    batch = MTPCollator(tokenizer, n_future_tokens=n_heads, max_length=512)(RECORDS)
    ids, labels, response = batch["input_ids"], batch["labels"], batch["response_mask"]
    B, S = ids.shape
    for b in range(B):
        for t in range(S):
            for k in range(n_heads):
                j = t + k + 1
                expected = int(ids[b, j]) if j < S and response[b, j] else IGNORE_INDEX
                assert int(labels[b, t, k]) == expected, (b, t, k)


def test_no_prompt_token_is_ever_a_label(tokenizer):
    batch = MTPCollator(tokenizer, n_future_tokens=3, max_length=512)(RECORDS)
    for b, rec in enumerate(RECORDS):
        prompt_length = len(encode_prompt(tokenizer, rec))
        target_positions = torch.nonzero(batch["labels"][b] != IGNORE_INDEX)  # (t, k) pairs
        assert ((target_positions[:, 0] + target_positions[:, 1] + 1) >= prompt_length).all()
        assert not batch["response_mask"][b, :prompt_length].any()
        assert batch["attention_mask"][b, :prompt_length].all()  # attention still sees the prompt


def test_response_mask_covers_output_and_eos(tokenizer):
    batch = MTPCollator(tokenizer, n_future_tokens=2, max_length=512)(RECORDS)
    for b, rec in enumerate(RECORDS):
        length = int(batch["attention_mask"][b].sum())
        response_ids = batch["input_ids"][b][batch["response_mask"][b]].tolist()
        assert response_ids == encode_response(tokenizer, rec["output"])
        assert response_ids[-1] == tokenizer.eos_id and batch["response_mask"][b, length - 1]
        assert tokenizer.decode(response_ids) == rec["output"]
        assert batch["input_ids"][b, 0] == tokenizer.bos_id


def test_padding_is_right_side_pad_id_and_never_labelled(tokenizer):
    batch = MTPCollator(tokenizer, n_future_tokens=4, max_length=512)(RECORDS)
    padding = ~batch["attention_mask"]
    assert padding.any()  # the records differ in length
    assert (batch["input_ids"][padding] == tokenizer.pad_id).all()
    assert not batch["response_mask"][padding].any()
    assert (batch["labels"][padding] == IGNORE_INDEX).all()
    lengths = batch["attention_mask"].sum(dim=1)
    for b, length in enumerate(lengths):
        assert batch["attention_mask"][b, :length].all() and not batch["attention_mask"][b, length:].any()


def test_template_has_the_alpaca_sections():
    assert format_prompt("Do X.").endswith("### Instruction:\nDo X.\n\n" + RESPONSE_MARKER)
    with_input = format_prompt("Do X.", "x = 1")
    assert "### Input:\nx = 1\n\n" in with_input and "paired with an input" in with_input


def test_long_prompt_is_cut_from_the_left_keeping_bos_and_the_whole_response(tokenizer):
    rec = record("word " * 400, "def f():\n    return 1\n")
    response = encode_response(tokenizer, rec["output"])
    prompt = encode_prompt(tokenizer, rec)
    max_length = 64
    batch = MTPCollator(tokenizer, n_future_tokens=2, max_length=max_length)([rec])
    ids = batch["input_ids"][0].tolist()
    assert len(ids) == max_length and ids[0] == tokenizer.bos_id
    assert ids[-len(response) :] == response  # eos included
    assert ids[1 : max_length - len(response)] == prompt[len(prompt) - (max_length - len(response) - 1) :]


def test_long_response_keeps_at_least_half_the_budget():
    prompt, response = list(range(100, 140)), list(range(200, 300))
    sample = truncate(prompt, response, 64)
    assert len(sample.ids) == 64 and sample.prompt_length == 32
    assert sample.ids[0] == 100 and sample.ids[1:32] == prompt[-31:]  # bos + end of the prompt
    assert sample.ids[32:] == response[:32]
    short = truncate([1, 2, 3], response, 10)  # a short prompt is kept whole
    assert short.prompt_length == 3 and short.ids == [1, 2, 3] + response[:7]
    tiny = truncate(prompt, response, 2)
    assert tiny.ids == [100, 200] and tiny.prompt_length == 1


def kept_prompt_length(n_prompt: int, n_response: int, max_length: int) -> int:
    """The documented policy, written out independently of `truncate`."""
    if n_prompt + n_response <= max_length:
        return n_prompt
    return min(n_prompt, max(max_length // 2, max_length - n_response))


def expected_ids(prompt: list[int], response: list[int], max_length: int) -> tuple[list[int], int]:
    kept = kept_prompt_length(len(prompt), len(response), max_length)
    kept_prompt = prompt if kept == len(prompt) else prompt[:1] + prompt[len(prompt) - (kept - 1) :]
    return kept_prompt + response[: max_length - kept], kept


def test_truncated_batch_still_labels_only_response(tokenizer):
    recs = [record("word " * 300, "x = 1\n" * 80), record("short", "y = 2\n")]
    n_heads, max_length = 4, 48
    batch = MTPCollator(tokenizer, n_future_tokens=n_heads, max_length=max_length)(recs)
    assert batch["input_ids"].shape[1] <= max_length
    assert batch["response_mask"][0].sum() >= max_length // 2
    labelled = batch["labels"] != IGNORE_INDEX
    assert labelled.any()
    for b, t, k in torch.nonzero(labelled).tolist():
        assert batch["response_mask"][b, t + k + 1]
    ids, kept = expected_ids(
        encode_prompt(tokenizer, recs[0]), encode_response(tokenizer, recs[0]["output"]), max_length
    )
    assert kept == max_length // 2 and batch["input_ids"][0].tolist() == ids
    assert not batch["response_mask"][0, :kept].any() and batch["response_mask"][0, kept:].all()
    for k in range(n_heads):  # head k+1's first label is at t = kept - k - 1, and it is the first response token
        labelled_t = torch.nonzero(labelled[0, :, k]).flatten()
        assert int(labelled_t[0]) == kept - k - 1 and int(batch["labels"][0, kept - k - 1, k]) == ids[kept]


WORDS = ["def", "return", "x", "+", "1", "for", "in", "range", "(", ")", ":", "\n", "    ", "é", "値", "if", "=="]


def random_record(rng: random.Random, i: int) -> dict:
    def text(max_words: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, max_words)))

    input_text = text(30) if rng.random() < 0.3 else ""
    return record(text(120), text(120), input_text=input_text, correct=rng.random() < 0.5, task_id=f"r{i}")


def test_random_records_label_exactly_the_response_tokens_that_fit(tokenizer):
    rng = random.Random(1234)
    n_records = n_truncated = 0
    for trial in range(12):
        max_length, n_heads = rng.choice([2, 3, rng.randint(4, 64), rng.randint(64, 400)]), rng.randint(1, 4)
        recs = [random_record(rng, n_records + j) for j in range(rng.randint(1, 5))]
        n_records += len(recs)
        batch = MTPCollator(tokenizer, n_future_tokens=n_heads, max_length=max_length)(recs)
        S = batch["input_ids"].shape[1]
        for b, rec in enumerate(recs):
            prompt, response = encode_prompt(tokenizer, rec), encode_response(tokenizer, rec["output"])
            ids, kept = expected_ids(prompt, response, max_length)
            n = len(ids)
            n_truncated += n < len(prompt) + len(response)
            assert batch["input_ids"][b, :n].tolist() == ids and n <= max_length, (trial, b)
            assert batch["response_mask"][b].tolist() == [False] * kept + [True] * (n - kept) + [False] * (S - n)
            assert n - kept >= min(len(response), max_length - max_length // 2)  # the response is never dropped whole
            for t in range(S):
                for k in range(n_heads):
                    j = t + k + 1
                    expected = ids[j] if kept <= j < n else IGNORE_INDEX  # prompt and padding: never a label
                    assert int(batch["labels"][b, t, k]) == expected, (trial, b, t, k)
    assert n_records >= 24 and n_truncated >= 8  # the seed exercises truncation, not only records that fit


def test_bad_arguments_are_named(tokenizer):
    with pytest.raises(DataError, match="n_future_tokens is 0"):
        MTPCollator(tokenizer, n_future_tokens=0, max_length=16)
    with pytest.raises(DataError, match="data.max_length: 1"):
        MTPCollator(tokenizer, n_future_tokens=1, max_length=1)
    with pytest.raises(DataError, match="record 'x' has no 'output'"):
        MTPCollator(tokenizer, 1, 16)([{"instruction": "i", "task_id": "x", "is_correct": True}])
