"""Early stopping whose decision every rank reaches together.

Signals (an objective declares which it has, `Objective.early_stopping_signals`):

- **converged** ("loss"): the monitored validation loss has not improved by more than `min_delta`
  for `patience` validations in a row;
- **unstable** ("grad_norm", the critic): at least `grad_norm_threshold_ratio` of the last
  `grad_norm_window` optimizer steps had a gradient norm above `grad_norm_threshold` — the value head
  is diverging. A window not yet full is stable. A plateau of the gradient norm is *not* a signal:
  the critic's grad norm swings from step to step while the head still learns;
- **out of range** ("pred_var", the critic): the variance of the value head's predictions over the
  validation set is outside `[pred_var_min, pred_var_max]` (collapsed to a constant, or exploding).
  Judged at validations, so the head has trained `eval_interval` steps before the first verdict.

`mode` combines them: `any` stops on converged OR unstable OR out of range; `all` stops when converged
AND stable AND in range (stop once the loss has converged, unless the critic is still unhealthy);
`loss_only` stops on convergence alone.

Every input is the same on every rank (reduced validation metrics, the global grad norm), and
`should_stop` all-reduces the verdict anyway, so no rank ever leaves a collective loop alone. The
state is saved in checkpoints; `outcome()` is what the loop logs as `early_stopping/*`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from wmtp.distributed import DistContext, all_reduce_any
from wmtp.train.sections import EarlyStoppingSection

STEP_SIGNALS = ("grad_norm",)  # can change after any optimizer step, not only at a validation
PRED_VAR_METRIC = "val/value/pred_var"


@dataclass
class EarlyStoppingState:
    best: float = math.inf
    bad_validations: int = 0
    grad_norms: list[float] = field(default_factory=list)  # the last grad_norm_window steps
    last_pred_var: float | None = None  # at the last validation
    stopped_reason: str | None = None
    stopped_step: int | None = None


class EarlyStopping:
    """`signals`: what the objective provides ("loss", and for the critic "grad_norm", "pred_var").
    `monitor`: the validation metric watched when the spec does not name one."""

    def __init__(self, cfg: EarlyStoppingSection, signals: tuple[str, ...] = ("loss",), monitor: str = "val/loss"):
        self.cfg = cfg
        self.signals = tuple(signals)
        self.monitor = cfg.monitor or monitor
        self.state = EarlyStoppingState()

    @property
    def health_signals(self) -> tuple[str, ...]:
        """The critic's health signals in use (none under mode loss_only)."""
        if self.cfg.mode == "loss_only":
            return ()
        return tuple(s for s in self.signals if s in ("grad_norm", "pred_var"))

    @property
    def checks_every_step(self) -> bool:
        """True when `should_stop` must also be asked after steps without validation."""
        return self.cfg.enabled and any(s in STEP_SIGNALS for s in self.health_signals)

    # ------------------------------------------------------------------ observations

    def observe_step(self, metrics: dict[str, float]) -> None:
        """Record the step's global gradient norm (the same on every rank)."""
        if "grad_norm" in metrics:
            self.state.grad_norms = (self.state.grad_norms + [metrics["grad_norm"]])[-self.cfg.grad_norm_window :]

    def observe_validation(self, metrics: dict[str, float]) -> None:
        """Record a validation's monitored loss and prediction variance (reduced over ranks)."""
        pred_var = metrics.get(PRED_VAR_METRIC)
        if pred_var is not None and not math.isnan(pred_var):
            self.state.last_pred_var = pred_var
        value = metrics.get(self.monitor)
        if value is None or math.isnan(value):
            return
        if value < self.state.best - self.cfg.min_delta:
            self.state.best, self.state.bad_validations = value, 0
        else:
            self.state.bad_validations += 1

    # ------------------------------------------------------------------ signals

    def converged(self) -> bool:
        return self.state.bad_validations >= self.cfg.patience

    def unstable_fraction(self) -> float:
        """Share of the last `grad_norm_window` steps whose grad norm exceeded the threshold (0 until full)."""
        norms = self.state.grad_norms
        if len(norms) < self.cfg.grad_norm_window:
            return 0.0
        return sum(n > self.cfg.grad_norm_threshold for n in norms) / len(norms)

    def unstable(self) -> bool:
        return self.unstable_fraction() >= self.cfg.grad_norm_threshold_ratio

    def pred_var_out_of_range(self) -> bool:
        var, low, high = self.state.last_pred_var, self.cfg.pred_var_min, self.cfg.pred_var_max
        if var is None:
            return False
        return (low is not None and var < low) or (high is not None and var > high)

    def local_verdict(self) -> tuple[bool, str]:
        """(stop?, why) from this rank's state, by `mode`."""
        # signal → (what it says when it fires, what it says when healthy, its check)
        health = {
            "grad_norm": ("unstable gradients", "stable gradients", self.unstable),
            "pred_var": (
                "prediction variance out of range",
                "prediction variance in range",
                self.pred_var_out_of_range,
            ),
        }
        used = [health[s] for s in self.health_signals]
        problems = [bad for bad, _, check in used if check()]
        if self.cfg.mode == "all":
            if not self.converged() or problems:
                return False, ""
            return True, " and ".join(["loss converged", *(good for _, good, _ in used)])
        reasons = (["loss converged"] if self.converged() else []) + problems
        return bool(reasons), ", ".join(reasons)

    def should_stop(self, ctx: DistContext, device, step: int | None = None) -> bool:
        """The collective decision; call it at the same point on every rank."""
        if not self.cfg.enabled:
            return False
        local, reason = self.local_verdict()
        stop = all_reduce_any(local, ctx, device)
        if stop and self.state.stopped_reason is None:
            self.state.stopped_reason = reason or "another rank"
            self.state.stopped_step = step
        return stop

    def outcome(self) -> dict[str, float]:
        """Numbers for `early_stopping/*` metrics: counter, best, and the critic's signals."""
        out = {
            "early_stopping/bad_validations": float(self.state.bad_validations),
            "early_stopping/stopped": float(self.state.stopped_reason is not None),
        }
        if math.isfinite(self.state.best):
            out["early_stopping/best"] = self.state.best
        if "grad_norm" in self.health_signals:
            out["early_stopping/unstable_fraction"] = self.unstable_fraction()
        return out

    def state_dict(self) -> dict:
        return asdict(self.state)

    def load_state_dict(self, state: dict) -> None:
        known = {f.name for f in fields(EarlyStoppingState)}
        self.state = EarlyStoppingState(**{k: v for k, v in state.items() if k in known})
        self.state.grad_norms = self.state.grad_norms[-self.cfg.grad_norm_window :]
