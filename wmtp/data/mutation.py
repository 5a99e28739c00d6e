"""Small, plausible bugs in a correct Python solution: candidates for the smoke set's incorrect samples.

Each mutant changes one token of the source text in place (the rest of the text, comments and
layout included, stays byte for byte), or replaces the body with `return None`:

- operator swap: `+`↔`-`, `*`→`+`, `//`→`/`, `<`↔`<=`, `>`↔`>=`, `==`↔`!=`, `+=`↔`-=`, `and`↔`or`, `True`↔`False`
- off by one: an integer literal `n` becomes `n + 1`
- constant: the whole body becomes `return None`

A mutant is only a candidate: the smoke preparation executes it against the problem's tests and
keeps it as an incorrect sample only if it fails them.
"""

from __future__ import annotations

import io
import re
import tokenize
from dataclasses import dataclass

OPERATOR_SWAPS = {
    "+": "-",
    "-": "+",
    "*": "+",
    "//": "/",
    "<": "<=",
    "<=": "<",
    ">": ">=",
    ">=": ">",
    "==": "!=",
    "!=": "==",
    "+=": "-=",
    "-=": "+=",
}
NAME_SWAPS = {"and": "or", "or": "and", "True": "False", "False": "True"}


@dataclass(frozen=True)
class Mutant:
    source: str
    description: str  # e.g. "line 3: '<' -> '<='"


def line_starts(source: str) -> list[int]:
    starts = [0]
    for match in re.finditer("\n", source):
        starts.append(match.end())
    return starts


def replace_token(source: str, token: tokenize.TokenInfo, new_text: str, starts: list[int]) -> str:
    begin = starts[token.start[0] - 1] + token.start[1]
    end = starts[token.end[0] - 1] + token.end[1]
    return source[:begin] + new_text + source[end:]


def token_mutants(source: str) -> list[Mutant]:
    """Every one-token mutant of `source`, in source order; none if it does not tokenize."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return []
    starts = line_starts(source)
    mutants = []
    for token in tokens:
        replacement = None
        if token.type == tokenize.OP and token.string in OPERATOR_SWAPS:
            replacement = OPERATOR_SWAPS[token.string]
        elif token.type == tokenize.NAME and token.string in NAME_SWAPS:
            replacement = NAME_SWAPS[token.string]
        elif token.type == tokenize.NUMBER and token.string.isdigit():
            replacement = str(int(token.string) + 1)
        if replacement is not None:
            mutated = replace_token(source, token, replacement, starts)
            mutants.append(Mutant(mutated, f"line {token.start[0]}: {token.string!r} -> {replacement!r}"))
    return mutants


def constant_mutant(source: str) -> Mutant:
    """The body replaced by `return None`, indented like the body's first line."""
    first_code_line = next((line for line in source.splitlines() if line.strip()), "    ")
    indent = first_code_line[: len(first_code_line) - len(first_code_line.lstrip())] or "    "
    return Mutant(f"{indent}return None\n", "body replaced by 'return None'")


def candidate_mutants(source: str) -> list[Mutant]:
    """Token mutants then the constant one, without duplicates or no-op changes."""
    seen = {source}
    unique = []
    for mutant in token_mutants(source) + [constant_mutant(source)]:
        if mutant.source not in seen:
            seen.add(mutant.source)
            unique.append(mutant)
    return unique
