"""End-of-stage plots: what a researcher reads off the PNGs, checked on the drawn matplotlib figures."""

from __future__ import annotations

import matplotlib.image
import pytest
import torch

from wmtp.train.loop import History
from wmtp.train.plots import loss_figure, weight_figure, write_plots


def train_history(steps: int, n_heads: int = 2) -> list[tuple[int, dict]]:
    return [
        (
            s,
            {
                "loss/total": 3.0 - 0.1 * s,
                "lr": 1e-4,
                **{f"loss/head_{k}": 3.0 - 0.1 * s + 0.05 * k for k in range(1, n_heads + 1)},
            },
        )
        for s in range(1, steps + 1)
    ]


def mtp_validation(step: int, n_heads: int = 2) -> tuple[int, dict]:
    """The keys `Trainer.validate` logs for an MTP objective: the objective's loss and pooled CE."""
    heads = {f"val/ce/head_{k}": 2.0 + 0.1 * k for k in range(1, n_heads + 1)}
    return step, {"val/loss": 1.8, "val/loss/mtp": 1.8, "val/ce": sum(heads.values()) / n_heads, **heads}


def line(ax, label_part: str):
    matches = [ln for ln in ax.get_lines() if label_part in ln.get_label()]
    assert len(matches) == 1, [ln.get_label() for ln in ax.get_lines()]
    return matches[0]


def visible_tick_labels(fig, ax) -> list[str]:
    fig.canvas.draw()
    lo, hi = ax.get_xlim()
    return [t.get_text() for t in ax.get_xticklabels() if lo <= t.get_position()[0] <= hi]


def test_a_single_validation_point_is_drawn_with_a_marker_in_both_panels():
    history = History(train=train_history(3), valid=[mtp_validation(3)])
    fig = loss_figure(history, 2, "smoke", "baseline")
    objective, ce = fig.axes
    for ax, label in [(objective, "val/loss"), (ce, "val/ce (heads combined)")]:
        drawn = line(ax, label)
        assert list(drawn.get_xdata()) == [3]
        assert drawn.get_marker() not in ("None", "", " ", None)
        assert drawn.get_markersize() >= 4


def test_val_ce_is_plotted_next_to_the_objectives_validation_loss():
    history = History(train=train_history(4), valid=[mtp_validation(2), mtp_validation(4)])
    fig = loss_figure(history, 2, "smoke", "baseline")
    objective, ce = fig.axes
    assert list(line(objective, "val/loss").get_ydata()) == [1.8, 1.8]
    assert list(line(ce, "val/ce (heads combined)").get_ydata()) == pytest.approx([2.15, 2.15])
    assert list(line(ce, "val/ce head 2").get_ydata()) == pytest.approx([2.2, 2.2])
    assert "comparable across experiments" in ce.get_title()
    # the training curves stay on the objective's panel, one per head and the total
    assert {ln.get_label() for ln in objective.get_lines()} == {
        "train: total",
        "train: head 1",
        "train: head 2",
        "validation: val/loss (objective)",
    }
    assert [ax.get_legend() is not None for ax in fig.axes] == [True, True]


def test_an_objective_without_val_ce_gets_one_panel():
    # the critic validates its value loss only: no val/ce, no per-head CE
    history = History(
        train=[(s, {"loss/total": 0.5, "loss/value": 0.5}) for s in (1, 2)],
        valid=[(2, {"val/loss": 0.4, "val/loss/value": 0.4, "val/value/explained_variance": 0.1})],
    )
    fig = loss_figure(history, 2, "verifiable", "critic")
    (ax,) = fig.axes
    assert [ln.get_label() for ln in ax.get_lines()] == ["train: total", "validation: val/loss (objective)"]


def test_titles_name_experiment_and_stage():
    fig = loss_figure(History(train=train_history(2), valid=[mtp_validation(2)]), 2, "verifiable", "verifiable")
    assert fig.get_suptitle() == "verifiable / verifiable — loss"
    hist = weight_figure(torch.linspace(0, 2, 100), "smoke", "rho1")
    assert hist.get_suptitle() == "smoke / rho1 — token weights"
    assert hist.axes[0].get_title() == "100 tokens, mean 1.000"


@pytest.mark.parametrize(
    "steps, ticks", [(1, ["1"]), (2, ["1", "2"]), (3, ["1", "2", "3"]), (5, ["1", "2", "3", "4", "5"])]
)
def test_x_axis_ticks_are_whole_optimizer_steps(steps, ticks):
    fig = loss_figure(History(train=train_history(steps), valid=[mtp_validation(steps)]), 2, "smoke", "baseline")
    for ax in fig.axes:
        assert visible_tick_labels(fig, ax) == ticks
        assert ax.get_xlabel() == "optimizer step"


def test_a_long_run_still_gets_integer_ticks():
    fig = loss_figure(History(train=train_history(40)), 2, "smoke", "baseline")
    labels = visible_tick_labels(fig, fig.axes[0])
    assert len(labels) >= 3 and all(label.isdigit() for label in labels)


def test_write_plots_writes_readable_pngs(tmp_path):
    history = History(train=train_history(3), valid=[mtp_validation(3)])
    history.add_weights(torch.rand(50))
    written = write_plots(history, tmp_path / "plots", 2, experiment="smoke", stage="baseline")
    assert [p.name for p in written] == ["loss_per_head.png", "token_weights.png"]
    wide = matplotlib.image.imread(written[0])  # two panels: wider than tall
    assert wide.shape[1] > 2 * wide.shape[0]
    assert matplotlib.image.imread(written[1]).ndim == 3


def test_write_plots_with_validation_only_or_nothing(tmp_path):
    # validation points without any training log (history.train empty) still get the loss plot
    written = write_plots(History(valid=[mtp_validation(7)]), tmp_path / "a", 2, experiment="e", stage="s")
    assert [p.name for p in written] == ["loss_per_head.png"]
    assert write_plots(History(), tmp_path / "b", 2, experiment="e", stage="s") == []
