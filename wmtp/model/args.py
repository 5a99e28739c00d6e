"""`ModelArgs`: the fields of Meta's params.json plus `max_seq_len`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from wmtp.errors import CheckpointError


@dataclass
class ModelArgs:
    dim: int = 4096  # width of the residual stream
    n_layers: int = 32  # trunk blocks + one block per future-token head
    n_heads: int = 32  # attention (query) heads
    n_kv_heads: Optional[int] = None  # key/value heads for GQA; None = n_heads
    vocab_size: int = 32000
    multiple_of: int = 256  # SwiGLU hidden size is rounded up to a multiple of this
    ffn_dim_multiplier: Optional[float] = None  # scales Meta's 2/3·4·dim hidden size
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    n_future_tokens: int = 1  # number of prediction heads (4 in 7B_1T_4)
    max_seq_len: int = 2048  # longest sequence RoPE tables are built for

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        problems = []
        if self.dim % self.n_heads:
            problems.append(f"dim={self.dim} is not divisible by n_heads={self.n_heads}")
        if (self.dim // self.n_heads) % 2:
            problems.append("head dim (dim / n_heads) must be even for RoPE")
        if self.n_heads % self.n_kv_heads:
            problems.append(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if not 1 <= self.n_future_tokens <= self.n_layers:
            problems.append(f"n_future_tokens={self.n_future_tokens} must be between 1 and n_layers={self.n_layers}")
        if problems:
            raise CheckpointError("invalid model params: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def n_trunk_layers(self) -> int:
        """Blocks shared by every head (`layers[:-1]` in Meta's layout)."""
        return self.n_layers - self.n_future_tokens

    @property
    def ffn_hidden_dim(self) -> int:
        """Meta's SwiGLU hidden size rule: 2/3·4·dim, scaled, rounded up to `multiple_of`."""
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    def to_params(self) -> dict:
        """The params.json dict (all fields, including max_seq_len)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_params(cls, params: dict, source: str = "params.json", **overrides) -> "ModelArgs":
        """Build from a params.json dict; unknown keys are an error naming `source`."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise CheckpointError(f"{source}: unknown key(s) {unknown}; expected a subset of {sorted(known)}")
        values = {**params, **{k: v for k, v in overrides.items() if v is not None}}
        try:
            return cls(**values)
        except TypeError as exc:  # wrong value types surface here
            raise CheckpointError(f"{source}: {exc}") from None

    @classmethod
    def from_json_file(cls, path: Path, **overrides) -> "ModelArgs":
        path = Path(path)
        params = read_json_object(path, missing="params file not found", expected="a JSON object of model params")
        return cls.from_params(params, source=str(path), **overrides)


def read_json_object(path: Path, missing: str, expected: str = "a JSON object") -> dict:
    """A model file's JSON object (params.json, an HF config.json); every problem one CheckpointError naming it."""
    if not path.is_file():
        raise CheckpointError(f"{path}: {missing}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected {expected}")
    return data
