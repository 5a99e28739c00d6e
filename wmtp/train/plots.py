"""End-of-stage PNG plots for MLflow and the stage's `plots/`: loss curves, token-weight histogram.

`loss_figure` / `weight_figure` build the figures (tests read back what they drew); `write_plots` saves
them. Every figure is titled "<experiment> / <stage> — …" so that a PNG pulled out of MLflow or a run
dir still says where it came from, and steps are whole optimizer steps on the x axis.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: containers and CI have no display
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

LOSS_PNG = "loss_per_head.png"
WEIGHTS_PNG = "token_weights.png"  # wmtp.compare reads it back by this name
MARKED_UP_TO = 30  # a training curve with at most this many points gets markers (one point is no line)


def write_plots(history, out_dir: Path, n_heads: int, *, experiment: str, stage: str) -> list[Path]:
    """Write the plots the history supports; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if history.train or history.valid:
        written.append(save(loss_figure(history, n_heads, experiment, stage), out_dir / LOSS_PNG))
    if history.weights:
        written.append(save(weight_figure(torch.cat(history.weights), experiment, stage), out_dir / WEIGHTS_PNG))
    return written


def save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=100)
    return path


def title(experiment: str, stage: str, what: str) -> str:
    return f"{experiment} / {stage} — {what}"


def points(history: list[tuple[int, dict]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `key` over the entries that logged it."""
    kept = [(step, m[key]) for step, m in history if m.get(key) is not None]
    return [s for s, _ in kept], [v for _, v in kept]


def whole_steps(axes, steps: list[int]) -> None:
    """Integer ticks only: optimizer steps are whole. A span under two steps (a run of one step, or a
    single validation point) is widened to ±½ step, where matplotlib's default margins would leave no
    whole number but the one step itself and the locator would fall back to fractions."""
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlabel("optimizer step")
        if steps and max(steps) - min(steps) < 2:
            ax.set_xlim(min(steps) - 0.5, max(steps) + 0.5)


def loss_figure(history, n_heads: int, experiment: str, stage: str) -> Figure:
    """Left: the objective's loss — training (total and per head) with `val/loss` over it. Right, when
    validation logged it: `val/ce`, the unweighted MTP cross-entropy (combined and per head), which
    means the same in every experiment. Validation points always carry markers: one point is visible."""
    heads = [f"val/ce/head_{k}" for k in range(1, n_heads + 1)]
    has_ce = any(points(history.valid, key)[0] for key in ["val/ce", *heads])
    fig = Figure(figsize=(12 if has_ce else 7, 4.5), layout="constrained")
    axes = fig.subplots(1, 2 if has_ce else 1, squeeze=False, sharex=True)[0]
    drawn: list[int] = []  # every step drawn, for the x range
    fig.suptitle(title(experiment, stage, "loss"))

    ax = axes[0]
    train = [("loss/total", "train: total", 2.0, "C0")] + [
        (f"loss/head_{k}", f"train: head {k}", 1.0, f"C{k}") for k in range(1, n_heads + 1)
    ]
    for key, label, width, color in train:
        steps, values = points(history.train, key)
        if steps:
            drawn += steps
            ax.plot(
                steps,
                values,
                color=color,
                linewidth=width,
                marker="o" if len(steps) <= MARKED_UP_TO else None,
                markersize=3,
                label=label,
            )
    steps, values = points(history.valid, "val/loss")
    if steps:
        drawn += steps
        ax.plot(steps, values, "k--", marker="o", markersize=6, label="validation: val/loss (objective)")
    ax.set_title("objective loss", fontsize="medium")
    ax.set_ylabel("loss")

    if has_ce:
        ax = axes[1]
        steps, values = points(history.valid, "val/ce")
        if steps:
            drawn += steps
            ax.plot(steps, values, "k-", marker="s", markersize=6, linewidth=2, label="val/ce (heads combined)")
        for k, key in enumerate(heads, start=1):
            steps, values = points(history.valid, key)
            if steps:
                drawn += steps
                ax.plot(
                    steps, values, "--", color=f"C{k}", marker="o", markersize=4, linewidth=1, label=f"val/ce head {k}"
                )  # head k has the same colour in both panels
        ax.set_title("validation cross-entropy (unweighted, comparable across experiments)", fontsize="medium")
        ax.set_ylabel("cross-entropy (nats)")

    whole_steps(axes, drawn)
    for ax in axes:
        if ax.get_lines():
            ax.legend(fontsize="small")
    return fig


def weight_figure(weights: torch.Tensor, experiment: str, stage: str) -> Figure:
    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.subplots()
    fig.suptitle(title(experiment, stage, "token weights"))
    ax.hist(weights.numpy(), bins=60)
    ax.set_xlabel("token weight")
    ax.set_ylabel("tokens")
    ax.set_title(f"{weights.numel():,} tokens, mean {weights.mean():.3f}", fontsize="medium")
    return fig
