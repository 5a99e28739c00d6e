"""How an evaluation generates and executes: one model for `wmtp eval run`'s flags, a stage spec's
`eval:` block (`wmtp.train.config.EvalSection` extends it with the benchmark files) and the runner.

Every range and every rule across options is declared here once:

    EvalOptions(n=10, ks=[1, 10], temperature=0.8)          # from code or a spec: pydantic errors
    EvalOptions.from_flags(n=4)                              # from the CLI: EvalError naming --n

A spec prints a broken rule as `eval.n: …`, the CLI as `--n: …`. Light to import (pydantic only): the
CLI's `--help` and a spec's `--dry-run` load it without torch.
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from wmtp.errors import EvalError, RuleError

# The command-line flag of each option (`wmtp eval run`), for errors raised from flags.
FLAGS = {
    "n": "--n",
    "ks": "--k",
    "temperature": "--temperature",
    "top_p": "--top-p",
    "max_new_tokens": "--max-new-tokens",
    "speculative": "--speculative",
    "limit": "--limit",
    "batch_size": "--batch-size",
    "timeout_s": "--timeout",
}


class EvalOptions(BaseModel):
    """Sampling, generation and execution settings of one evaluation (the summary's `config`)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    n: int = Field(1, ge=1)  # samples per problem (n > 1 needs temperature > 0)
    ks: list[int] = [1]  # pass@k reported (each ≤ n), besides 1/5/10 where ≤ n
    temperature: float = Field(0.0, ge=0)  # 0 = greedy
    top_p: float = Field(1.0, gt=0, le=1)  # nucleus sampling mass (1 = off)
    max_new_tokens: int = Field(512, ge=1)  # tokens generated per completion at most
    speculative: bool = False  # self-speculative decoding with the MTP heads (greedy, or sampling at temperature > 0)
    limit: Optional[int] = Field(None, ge=1)  # the first N problems only
    batch_size: int = Field(8, ge=1)  # completions decoded together
    timeout_s: float = Field(10.0, gt=0)  # wall clock per program

    @model_validator(mode="after")
    def _check(self) -> "EvalOptions":
        for k in self.ks:
            if not 1 <= k <= self.n:
                raise RuleError(
                    "ks",
                    f"pass@{k} needs 1 ≤ k ≤ n = {self.n} samples per problem; raise n or drop {k} (got {self.ks})",
                    ("n",),
                )
        if self.n > 1 and self.temperature == 0:
            raise RuleError(
                "n",
                f"{self.n} greedy samples would all be the same completion; set temperature > 0 "
                f"(e.g. 0.8) or n 1 (got {self.n})",
                ("temperature",),
            )
        return self

    @classmethod
    def from_flags(cls, **values: Any) -> "EvalOptions":
        """The options of a command line; a bad value is an EvalError naming its flag: `--n: …`."""
        try:
            return cls(**values)
        except ValidationError as exc:
            raise EvalError(flag_error(exc)) from None


def flag_error(exc: ValidationError) -> str:
    """The first error of `exc` as one line naming the command-line flag at fault."""
    first = exc.errors()[0]
    rule = (first.get("ctx") or {}).get("error")
    if isinstance(rule, RuleError):
        return f"{FLAGS.get(rule.key, rule.key)}: {rule.message}"
    field = str(first["loc"][0]) if first["loc"] else ""
    message = first["msg"].removeprefix("Value error, ")
    if "input" in first and first["type"] != "missing":
        message += f" (got {first['input']!r})"
    return f"{FLAGS.get(field, field)}: {message}"


__all__ = ["FLAGS", "EvalOptions", "flag_error"]
