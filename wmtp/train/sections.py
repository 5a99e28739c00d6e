"""The sections of a stage spec (`model`, `data`, `train`, …, `eval`) and their building blocks.

Each is a pydantic model whose fields declare their ranges; rules across fields raise `RuleError` naming
the key. `wmtp.train.config` assembles them into a `StageSpec` and loads experiments; the objectives
(wmtp.train.objectives) build their own sections from `Section`, `Fraction` and `check_below`, so this
module sits below both and imports neither.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from wmtp.data.sampling import SamplingSpec
from wmtp.errors import RuleError
from wmtp.eval.options import EvalOptions
from wmtp.tracking import DEFAULT_EXPERIMENT


def check_below(low_key: str, low: Optional[float], high_key: str, high: Optional[float]) -> None:
    """`low < high` where both are set, else a RuleError naming `low_key`."""
    if low is not None and high is not None and not low < high:
        raise RuleError(low_key, f"should be less than {high_key}, which is {high} (got {low})", (high_key,))


# Every float of a spec must be finite (ConfigDict allow_inf_nan=False below): YAML's .nan / .inf are
# refused with the key's name, not met later as a NaN loss. Ranges are given field by field.
Fraction = Annotated[float, Field(ge=0, le=1)]
Beta = Annotated[float, Field(ge=0, lt=1)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelSection(Section):
    path: str = Field(description="Standard model dir or Meta release dir")
    # auto: fp32 weights + bf16 autocast on CUDA (under FSDP with > 1 rank: FSDP2's bf16 mixed precision
    # over fp32 shards instead), fp32 on MPS / CPU; float16: fp16 autocast + loss scaling
    # (wmtp.device.precision has the whole table; MPS refuses bfloat16)
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "auto"
    max_seq_len: Optional[int] = Field(None, ge=1)  # override of params.json's RoPE table length


def variant_file(path: str, variant: str) -> str:
    """`…/train.jsonl` → `…/train_small.jsonl` for the small variant; the path as given for full."""
    if variant == "full":
        return path
    p = Path(path)
    return str(p.with_name(f"{p.stem}_{variant}{p.suffix}"))


class DataSection(Section):
    train: str  # Alpaca JSONL with its index beside it
    valid: Optional[str] = None  # validation JSONL; None = no validation
    max_length: int = Field(2048, ge=2)  # tokens per sample after truncation (bos + at least one label)
    sampling: SamplingSpec = SamplingSpec(strategy="correct_only")
    valid_samples: Optional[int] = Field(256, ge=1)  # rows of `valid` used per validation (None = all)
    num_workers: int = Field(0, ge=0)  # DataLoader workers per rank
    # small: train on `<dir>/train_small.jsonl` and validate on `valid_small.jsonl` beside the files named
    # by `train` / `valid` (`wmtp data small DIR` writes them: ≤ 100 and ≤ 32 rows); full: the files as named.
    split_variant: Literal["full", "small"] = "full"

    @property
    def train_file(self) -> str:
        """The training JSONL this stage reads (`train`, or its small split)."""
        return variant_file(self.train, self.split_variant)

    @property
    def valid_file(self) -> Optional[str]:
        """The validation JSONL this stage reads (`valid`, or its small split), None without validation."""
        return variant_file(self.valid, self.split_variant) if self.valid else None


class TrainSection(Section):
    # Where the stage computes (and its end-of-stage evaluation): auto = cuda, else mps, else cpu (wmtp.device).
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    num_epochs: int = Field(1, ge=1)
    max_steps: Optional[int] = Field(None, ge=1)  # global cap on optimizer steps
    batch_size: int = Field(4, ge=1)  # per rank, per micro-step
    grad_accum_steps: int = Field(1, ge=1)
    # adamw: the training optimizer. sgd: plain gradient descent (no momentum, no per-element
    # normalisation): a step is exactly -lr·grad, so runs can be compared up to float rounding
    # (the distributed-equivalence tests use it; Adam turns rounding noise in ~0 gradients into lr-sized steps).
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-5, gt=0)
    min_lr_ratio: Fraction = 0.1  # cosine floor as a fraction of lr
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[Beta, Beta] = (0.9, 0.95)
    grad_clip: Optional[float] = Field(1.0, gt=0)  # global-norm clip; None = off
    # α_k of the MTP loss, one per head (each ≥ 0, not all 0); None = uniform mean
    head_weights: Optional[list[Annotated[float, Field(ge=0)]]] = None
    seed: int = Field(42, ge=0, lt=2**63)
    log_interval: int = Field(10, ge=1)
    eval_interval: int = Field(100, ge=1)  # validation every N optimizer steps (and at the end)
    save_interval: int = Field(100, ge=1)  # checkpoint every N optimizer steps (and at the end)
    keep_last: int = Field(2, ge=0)  # step checkpoints kept besides best/ and final/
    # The device's peak dense bf16 TFLOP/s for `mfu`; None: wmtp.train.flops' table by GPU name (no mfu on CPU/MPS).
    peak_tflops: Optional[float] = Field(None, gt=0)
    # torch.compile each transformer block (trunk and heads), as torchtitan does: inductor fuses the
    # norms, RoPE, SwiGLU and residual adds around the matmuls. The first steps pay the compilation
    # (tens of seconds per distinct block graph); losses agree with eager up to float rounding.
    compile: bool = False

    @field_validator("head_weights")
    @classmethod
    def _some_head_counts(cls, weights: Optional[list[float]]) -> Optional[list[float]]:
        if weights is not None and not sum(weights) > 0:
            raise ValueError("expected one weight per MTP head, at least one of them > 0")
        return weights


class EarlyStoppingSection(Section):
    enabled: bool = False
    # Validation metric watched for improvement (lower is better) by early stopping and for `best`;
    # null = the objective's default: val/ce (unweighted MTP cross-entropy) or, for the critic, val/loss.
    monitor: Optional[str] = None
    patience: int = Field(3, ge=1)  # validations without improvement before stopping
    min_delta: float = Field(0.0, ge=0)
    # How the signals combine (wmtp.train.early_stopping): any = converged or unstable or out of range;
    # all = converged and stable and in range; loss_only = converged. Only the critic has the last two.
    mode: Literal["any", "all", "loss_only"] = "loss_only"
    # critic: gradients are unstable when ≥ grad_norm_threshold_ratio of the last grad_norm_window
    # optimizer steps had a grad norm above grad_norm_threshold.
    grad_norm_window: int = Field(10, ge=1)
    grad_norm_threshold: float = Field(50.0, gt=0)
    grad_norm_threshold_ratio: float = Field(0.7, gt=0, le=1)
    # critic: the value predictions' variance on the validation set must stay in [min, max] (null: unbounded).
    pred_var_min: Optional[float] = Field(None, ge=0)
    pred_var_max: Optional[float] = Field(None, gt=0)

    @model_validator(mode="after")
    def _check_pred_var_range(self) -> "EarlyStoppingSection":
        check_below("pred_var_min", self.pred_var_min, "pred_var_max", self.pred_var_max)
        return self


class DistributedSection(Section):
    strategy: Literal["none", "ddp", "fsdp"] = "none"
    nproc_per_node: int = Field(1, ge=1)
    # Recompute activations in backward instead of keeping them (wmtp.distributed): full = every
    # transformer block keeps only its input; selective = per op, as torchtitan's "op" mode: matmul
    # and attention outputs are kept (all but every second matmul), the cheap elementwise ops (norms,
    # RoPE, SiLU) are recomputed; none = keep everything. true / false mean full / none.
    activation_checkpointing: Literal["none", "full", "selective"] = "none"
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    # `wmtp train` launching torchrun: seconds torchrun gives its workers after passing on a SIGTERM
    # (finish the step, validate if due, save) before it SIGKILLs them; torchrun's own default is 30.
    preemption_grace_s: int = Field(600, ge=1)

    @field_validator("activation_checkpointing", mode="before")
    @classmethod
    def _bool_is_full_or_none(cls, value: Any) -> Any:
        """Specs written before `selective` existed say true / false."""
        return {True: "full", False: "none"}.get(value, value) if isinstance(value, bool) else value


class TrackingSection(Section):
    uri: Optional[str] = None  # None: $MLFLOW_TRACKING_URI, else a local store under storage/mlflow
    experiment: str = DEFAULT_EXPERIMENT
    run_name: Optional[str] = None
    buffer_size: int = Field(10000, ge=1)  # metric points kept while the server is unreachable


class OutputSection(Section):
    root: str = "storage/checkpoints"  # run dirs are <root>/<experiment>-<timestamp> unless given


class EvalSection(EvalOptions):
    """End-of-stage evaluation of the final checkpoint (rank 0; `wmtp.eval.runner.evaluate`): the
    evaluation options (`wmtp.eval.options.EvalOptions`, shared with `wmtp eval run`) and the benchmark."""

    benchmark: Literal["humaneval", "mbpp"] = "humaneval"
    data: Optional[str] = None  # benchmark file (MBPP: required; HumanEval: the shipped 164 problems)
    mbpp_data: Optional[str] = None  # an MBPP file: MBPP is evaluated as well, into <stage>/eval/mbpp/

    @model_validator(mode="after")
    def _check_benchmark(self) -> "EvalSection":
        if self.benchmark == "mbpp" and not self.data:
            raise RuleError("data", "MBPP needs the path of its JSONL or parquet file")
        return self
