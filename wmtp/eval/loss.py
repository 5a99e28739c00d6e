"""Per-token loss of a policy vs a reference model on a validation split (the Rho-1 comparison).

For every response token `x_j` of the split's first `limit` rows (the training collator's template,
prompt masking and truncation):

    L_policy(x_j) = −log P_policy(x_j | x_<j)     head 1 (next token) of the policy
    L_ref(x_j)    = −log P_ref(x_j | x_<j)        the reference LM (our model class, or hf:<name>)
    excess        = L_policy − L_ref               what Rho-1 ranks tokens by

`token_loss_report` returns the means (over tokens), the excess quantiles and the fraction of tokens
the policy predicts worse than the reference; `write_loss_report` adds an excess-loss histogram PNG
and a JSON summary, both written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from wmtp.errors import EvalError

SUMMARY_FILE = "loss_summary.json"
HISTOGRAM_FILE = "excess_loss_hist.png"


def check_same_tokenizer(policy_dir: Path, reference: str) -> None:
    """A reference of our class must share the policy's tokenizer: excess loss compares token by token."""
    if reference.startswith("hf:"):
        return
    from wmtp.model.tokenizer import load_tokenizer

    policy_sp = load_tokenizer(policy_dir).sp.serialized_model_proto()
    try:
        reference_sp = load_tokenizer(reference).sp.serialized_model_proto()
    except Exception:  # no tokenizer in the reference dir: the vocab size check below still applies
        return
    if policy_sp != reference_sp:
        raise EvalError(
            f"--reference {reference}: its tokenizer differs from the policy's ({policy_dir}); "
            "per-token losses are only comparable with the same tokenizer"
        )


def token_loss_report(
    policy_dir: Path,
    reference: str,
    data: Path,
    batch_size: int = 8,
    limit: Optional[int] = None,
    max_length: int = 2048,
    device: Optional[str] = None,
    progress: bool = False,
) -> tuple[dict, np.ndarray]:
    """(summary, per-token excess losses) over the response tokens of the first `limit` rows of `data`."""
    from torch.utils.data import DataLoader

    from wmtp.common.progress import progress_bar
    from wmtp.data.collate import MTPCollator
    from wmtp.data.dataset import JsonlSamples
    from wmtp.data.index import DatasetIndex
    from wmtp.eval.runner import pick_device, resolve_model_dir
    from wmtp.model import Transformer, load_model, load_tokenizer
    from wmtp.model.mtp_loss import IGNORE_INDEX
    from wmtp.model.reference import load_reference_model
    from wmtp.weighting.rho1 import token_losses

    if batch_size < 1:
        raise EvalError(f"--batch-size must be at least 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise EvalError(f"--limit must be at least 1, got {limit}")
    policy_dir = resolve_model_dir(Path(policy_dir))
    if not reference.startswith("hf:"):
        reference = str(resolve_model_dir(Path(reference)))
    index = DatasetIndex.load(data)
    n_rows = len(index) if limit is None else min(limit, len(index))
    if n_rows == 0:
        raise EvalError(f"{data}: no rows to evaluate")
    check_same_tokenizer(policy_dir, reference)
    # float32 for both: the reference loader uses it, and a policy in another dtype would show its
    # rounding as excess loss.
    device, dtype = pick_device(device, "float32")
    policy = load_model(policy_dir, device=device, dtype=dtype).eval()
    ref_model = load_reference_model(reference, device).eval()
    if isinstance(ref_model, Transformer) and ref_model.args.vocab_size != policy.args.vocab_size:
        raise EvalError(
            f"--reference {reference}: vocab_size {ref_model.args.vocab_size} differs from the "
            f"policy's {policy.args.vocab_size}"
        )
    tokenizer = load_tokenizer(policy_dir)
    loader = DataLoader(
        JsonlSamples(data, np.arange(n_rows), index),
        batch_size=batch_size,
        shuffle=False,
        collate_fn=MTPCollator(tokenizer, 1, max_length),
    )
    policy_parts, reference_parts = [], []
    with torch.inference_mode(), progress_bar("token losses", total=n_rows, enabled=progress) as advance:
        for batch in loader:
            tokens = batch["input_ids"].to(device)
            labels = batch["labels"][:, :, 0].to(device)  # next token where it is a response token
            policy_logits = policy.forward_head(policy.forward_trunk(tokens), 0)
            if isinstance(ref_model, Transformer):
                ref_logits = ref_model(tokens, n_heads=1)[:, :, 0]
            else:
                ref_logits = ref_model(tokens)
            if ref_logits.shape[-1] != policy_logits.shape[-1]:
                raise EvalError(
                    f"--reference {reference}: {ref_logits.shape[-1]} logits per token, the policy has "
                    f"{policy_logits.shape[-1]}; the two models need the same vocabulary"
                )
            valid = labels != IGNORE_INDEX
            policy_parts.append(token_losses(policy_logits, labels)[valid].float().cpu())
            reference_parts.append(token_losses(ref_logits, labels)[valid].float().cpu())
            advance(tokens.shape[0])
    policy_losses = torch.cat(policy_parts).double().numpy()
    reference_losses = torch.cat(reference_parts).double().numpy()
    if policy_losses.size == 0:
        raise EvalError(f"{data}: the first {n_rows} rows hold no response tokens")
    excess = policy_losses - reference_losses
    quantiles = np.quantile(excess, [0.05, 0.25, 0.5, 0.75, 0.95])
    summary = {
        "policy": str(policy_dir),
        "reference": reference,
        "data": str(data),
        "rows": n_rows,
        "tokens": int(excess.size),
        "mean_policy_loss": float(policy_losses.mean()),
        "mean_reference_loss": float(reference_losses.mean()),
        "mean_excess_loss": float(excess.mean()),
        "std_excess_loss": float(excess.std()),
        "excess_quantiles": {q: float(v) for q, v in zip(("p05", "p25", "p50", "p75", "p95"), quantiles)},
        "fraction_excess_positive": float((excess > 0).mean()),
        "config": {
            "batch_size": batch_size,
            "limit": limit,
            "max_length": max_length,
            "device": device,
            "dtype": dtype,
        },
    }
    return summary, excess


def plot_excess_histogram(excess: np.ndarray, summary: dict, path: Path) -> Path:
    """Histogram of the per-token excess loss, the mean marked (written to a temp file, then renamed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from wmtp.common.files import atomic_output

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(excess, bins=80, color="tab:blue")
    ax.axvline(summary["mean_excess_loss"], color="k", linestyle="--", label=f"mean {summary['mean_excess_loss']:.4f}")
    ax.set_xlabel("excess loss  L_policy − L_reference  (nats)")
    ax.set_ylabel("response tokens")
    ax.set_title(
        f"{summary['tokens']:,} tokens of {summary['rows']} rows; "
        f"{100 * summary['fraction_excess_positive']:.1f}% above 0"
    )
    ax.legend()
    fig.tight_layout()
    with atomic_output(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)
    plt.close(fig)
    return path


def write_loss_report(summary: dict, excess: np.ndarray, out_dir: Path) -> tuple[Path, Path]:
    """Write the histogram PNG and the JSON summary into `out_dir`; returns (summary path, png path)."""
    from wmtp.common.files import write_json_atomic

    out_dir = Path(out_dir)
    png = plot_excess_histogram(excess, summary, out_dir / HISTOGRAM_FILE)
    summary_path = out_dir / SUMMARY_FILE
    write_json_atomic(summary_path, {**summary, "files": {"summary": str(summary_path), "histogram": str(png)}})
    return summary_path, png
