"""End-of-stage PNG plots for MLflow: loss curves per head, token-weight histogram."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: containers and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def write_plots(history, out_dir: Path, n_heads: int) -> list[Path]:
    """Write the plots the history supports; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if history.train:
        written.append(plot_losses(history, out_dir / "loss_per_head.png", n_heads))
    if history.weights:
        written.append(plot_weight_histogram(torch.cat(history.weights), out_dir / "token_weights.png"))
    return written


def plot_losses(history, path: Path, n_heads: int) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [s for s, _ in history.train]
    for key, label in [("loss/total", "total")] + [(f"loss/head_{k}", f"head {k}") for k in range(1, n_heads + 1)]:
        values = [m.get(key) for _, m in history.train]
        if any(v is not None for v in values):
            ax.plot(steps, values, label=label)
    if history.valid:
        ax.plot([s for s, _ in history.valid], [m.get("val/loss") for _, m in history.valid], "k--", label="validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_weight_histogram(weights: torch.Tensor, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(weights.numpy(), bins=60)
    ax.set_xlabel("token weight")
    ax.set_ylabel("tokens")
    ax.set_title(f"{weights.numel():,} tokens, mean {weights.mean():.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
