"""The Alpaca prompt template and how a record becomes token ids (shared by preparation, index and collator).

A record's prompt, with its `input` section only when `input` is not empty:

    Below is an instruction that describes a task[, paired with an input that provides further
    context]. Write a response that appropriately completes the request.

    ### Instruction:
    {instruction}

    [### Input:
    {input}

    ]### Response:
    <output>

Token ids = `[bos] + encode(prompt)` followed by `encode(output) + [eos]`. The two parts are encoded
separately so the prompt/response boundary is exact (no merge across it) and the token count of a
record is the same number everywhere: in the token budget at preparation, in the index and in the
collator.
"""

from __future__ import annotations

PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
PREAMBLE_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
RESPONSE_MARKER = "### Response:\n"
MAX_INDEXED_TOKENS = 65535  # the index stores token counts as uint16; longer records saturate here


def format_prompt(instruction: str, input_text: str = "") -> str:
    """The Alpaca prompt, ending with the response marker (the model writes the output after it)."""
    if input_text:
        return (
            f"{PREAMBLE_WITH_INPUT}\n\n### Instruction:\n{instruction}\n\n### Input:\n{input_text}\n\n{RESPONSE_MARKER}"
        )
    return f"{PREAMBLE}\n\n### Instruction:\n{instruction}\n\n{RESPONSE_MARKER}"


def encode_prompt(tokenizer, record: dict) -> list[int]:
    """`[bos] + prompt ids` of one record."""
    return tokenizer.encode(format_prompt(record["instruction"], record.get("input", "")), bos=True, eos=False)


def encode_response(tokenizer, output: str) -> list[int]:
    """`output ids + [eos]`."""
    return tokenizer.encode(output, bos=False, eos=True)


def count_tokens(tokenizer, record: dict) -> int:
    """Tokens of the whole record as the collator builds it (bos, prompt, output, eos)."""
    return len(encode_prompt(tokenizer, record)) + len(encode_response(tokenizer, record["output"]))
