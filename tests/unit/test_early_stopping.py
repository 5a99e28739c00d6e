"""The early-stopping plan's signals, one at a time and combined by mode (single process)."""

from __future__ import annotations

import pytest

from wmtp.distributed import DistContext
from wmtp.train.early_stopping import EarlyStopping
from wmtp.train.sections import EarlyStoppingSection

CRITIC_SIGNALS = ("loss", "grad_norm", "pred_var")
CPU = "cpu"


def critic_stopper(**cfg) -> EarlyStopping:
    settings = (
        dict(
            enabled=True,
            patience=2,
            mode="any",
            grad_norm_window=10,
            grad_norm_threshold=50.0,
            grad_norm_threshold_ratio=0.7,
            pred_var_min=0.1,
            pred_var_max=5.0,
        )
        | cfg
    )
    return EarlyStopping(EarlyStoppingSection(**settings), CRITIC_SIGNALS, monitor="val/loss")


def steps(stopper: EarlyStopping, norms: list[float]) -> list[bool]:
    """Feed grad norms one step at a time; the decision after each."""
    decisions = []
    for norm in norms:
        stopper.observe_step({"grad_norm": norm})
        decisions.append(stopper.should_stop(DistContext(), CPU))
    return decisions


def test_converged_after_patience_validations_without_improvement():
    stopper = critic_stopper(min_delta=0.01)
    decisions = []
    for loss in [1.0, 0.9, 0.895, 0.899]:  # 0.895 improves by < min_delta: a bad validation
        stopper.observe_validation({"val/loss": loss, "val/value/pred_var": 0.2})
        decisions.append(stopper.should_stop(DistContext(), CPU, step=len(decisions) + 1))
    assert decisions == [False, False, False, True]
    assert stopper.state.stopped_reason == "loss converged" and stopper.state.stopped_step == 4
    assert stopper.state.best == 0.9 and stopper.state.bad_validations == 2


def test_unstable_when_70_percent_of_the_last_10_norms_exceed_the_threshold():
    assert steps(critic_stopper(), [60.0] * 9) == [False] * 9  # window not full yet: stable
    stopper = critic_stopper()
    decisions = steps(stopper, [1.0, 1.0, 1.0] + [60.0] * 7)
    assert decisions[-1] is True and not any(decisions[:-1])
    assert stopper.state.stopped_reason == "unstable gradients"
    # 6 of 10 above the threshold is not enough; norms at the threshold do not count as above it.
    assert not any(steps(critic_stopper(), [1.0] * 4 + [60.0] * 6 + [50.0] * 10))


def test_a_plateau_of_swinging_norms_is_not_a_stop():
    """The smoke critic's grad norms: between 1.5 and 3.0, their window means within 5 % (the old rule stopped)."""
    norms = [1.5, 3.0, 2.2, 2.9, 1.6, 2.4, 1.8, 3.0, 2.1, 2.5] * 5
    assert not any(steps(critic_stopper(), norms))


@pytest.mark.parametrize("pred_var, stops", [(0.05, True), (0.1, False), (2.0, False), (5.0, False), (6.0, True)])
def test_prediction_variance_out_of_range_is_judged_at_validation(pred_var, stops):
    stopper = critic_stopper()
    stopper.observe_step({"grad_norm": 1.0, "value/pred_var": 99.0})  # a training batch's variance: ignored
    assert not stopper.should_stop(DistContext(), CPU)
    stopper.observe_validation({"val/loss": 1.0, "val/value/pred_var": pred_var})
    assert stopper.should_stop(DistContext(), CPU) is stops
    if stops:
        assert stopper.state.stopped_reason == "prediction variance out of range"


def test_mode_all_stops_on_convergence_only_while_the_critic_is_healthy():
    stopper = critic_stopper(mode="all", patience=1)
    stopper.observe_validation({"val/loss": 1.0, "val/value/pred_var": 0.2})
    stopper.observe_validation({"val/loss": 1.0, "val/value/pred_var": 0.05})  # converged, out of range
    assert not stopper.should_stop(DistContext(), CPU)
    stopper.observe_validation({"val/loss": 1.0, "val/value/pred_var": 0.2})  # converged, in range …
    assert steps(stopper, [60.0] * 10)[-1] is False  # … but unstable
    assert steps(stopper, [1.0] * 4)[-1] is True  # 6 of 10 above: stable again
    assert stopper.state.stopped_reason == ("loss converged and stable gradients and prediction variance in range")


def test_mode_any_stops_on_whichever_signal_fires_first_and_loss_only_on_convergence_alone():
    for mode, stops in [("any", True), ("loss_only", False)]:
        stopper = critic_stopper(mode=mode)
        stopper.observe_validation({"val/loss": 1.0, "val/value/pred_var": 0.01})
        assert steps(stopper, [60.0] * 10)[-1] is stops, mode
    stopper = critic_stopper(mode="loss_only", patience=1)
    assert not stopper.checks_every_step  # nothing to check between validations
    stopper.observe_validation({"val/loss": 1.0})
    stopper.observe_validation({"val/loss": 1.0})
    assert stopper.should_stop(DistContext(), CPU)


def test_objectives_without_health_signals_ignore_the_critics_settings():
    stopper = EarlyStopping(
        EarlyStoppingSection(enabled=True, mode="all", patience=1, pred_var_min=0.1), ("loss",), monitor="val/ce"
    )
    stopper.observe_validation({"val/ce": 2.0, "val/value/pred_var": 0.0})
    stopper.observe_validation({"val/ce": 2.0})
    assert stopper.should_stop(DistContext(), CPU) and stopper.state.stopped_reason == "loss converged"


def test_disabled_never_stops():
    stopper = critic_stopper(enabled=False, patience=1)
    for _ in range(3):
        stopper.observe_validation({"val/loss": 1.0, "val/value/pred_var": 0.0})
    assert not any(steps(stopper, [60.0] * 10))


def test_state_round_trips_and_an_older_checkpoints_state_loads():
    stopper = critic_stopper()
    steps(stopper, [1.0, 2.0, 3.0])
    stopper.observe_validation({"val/loss": 0.5, "val/value/pred_var": 0.3})
    restored = critic_stopper()
    restored.load_state_dict(stopper.state_dict())
    assert restored.state == stopper.state
    # Saved before stopped_step existed, with the old 2-window grad-norm history: still loads.
    old = {"best": 0.4, "bad_validations": 1, "grad_norms": [1.0] * 20, "last_pred_var": None, "stopped_reason": None}
    restored.load_state_dict(old)
    assert restored.state.best == 0.4 and len(restored.state.grad_norms) == 10 and restored.state.stopped_step is None


def test_outcome_reports_counter_best_and_unstable_fraction():
    stopper = critic_stopper()
    assert stopper.outcome() == {
        "early_stopping/bad_validations": 0.0,
        "early_stopping/stopped": 0.0,
        "early_stopping/unstable_fraction": 0.0,
    }
    stopper.observe_validation({"val/loss": 0.7})
    steps(stopper, [60.0] * 5 + [1.0] * 5)
    assert stopper.outcome() == {
        "early_stopping/bad_validations": 0.0,
        "early_stopping/stopped": 0.0,
        "early_stopping/best": 0.7,
        "early_stopping/unstable_fraction": 0.5,
    }
