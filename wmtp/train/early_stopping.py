"""Early stopping whose decision every rank reaches together.

Each rank feeds its own observations; `should_stop` all-reduces the local verdicts (any rank voting
stop stops all) so no rank ever leaves a collective loop alone. Its state is saved in checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from wmtp.distributed import DistContext, all_reduce_any
from wmtp.train.config import EarlyStoppingSection


@dataclass
class EarlyStoppingState:
    best: float = math.inf
    bad_validations: int = 0
    grad_norms: list[float] = field(default_factory=list)
    last_pred_var: float | None = None
    stopped_reason: str | None = None


STEP_SIGNALS = ("grad_norm", "pred_var")  # checked every optimizer step, not only after validation


class EarlyStopping:
    """`signals`: what the objective provides (`Objective.early_stopping_signals`): "loss" (the
    monitored validation metric stopped improving) and, for the critic, "grad_norm" and "pred_var".
    `monitor`: the validation metric watched when the spec does not name one."""

    def __init__(self, cfg: EarlyStoppingSection, signals: tuple[str, ...] = ("loss",), monitor: str = "val/loss"):
        self.cfg = cfg
        self.signals = tuple(signals)
        self.monitor = cfg.monitor or monitor
        self.state = EarlyStoppingState()

    @property
    def step_signals(self) -> tuple[str, ...]:
        """The per-step signals in use (none under mode loss_only)."""
        if self.cfg.mode == "loss_only":
            return ()
        return tuple(s for s in self.signals if s in STEP_SIGNALS)

    @property
    def checks_every_step(self) -> bool:
        """True when `should_stop` must also be asked after steps without validation."""
        return self.cfg.enabled and bool(self.step_signals)

    def observe_step(self, metrics: dict[str, float]) -> None:
        """Record per-step signals the critic criteria watch (grad norm, prediction variance)."""
        if "grad_norm" in metrics:
            self.state.grad_norms = (self.state.grad_norms + [metrics["grad_norm"]])[-2 * self.cfg.grad_norm_window :]
        if "value/pred_var" in metrics:
            self.state.last_pred_var = metrics["value/pred_var"]

    def observe_validation(self, metrics: dict[str, float]) -> None:
        value = metrics.get(self.monitor)
        if value is None or math.isnan(value):
            return
        if value < self.state.best - self.cfg.min_delta:
            self.state.best, self.state.bad_validations = value, 0
        else:
            self.state.bad_validations += 1

    def local_verdicts(self) -> dict[str, bool]:
        verdicts = {"loss": self.state.bad_validations >= self.cfg.patience}
        if "grad_norm" in self.step_signals:
            verdicts["grad_norm"] = self.grad_norm_plateaued()
        if "pred_var" in self.step_signals:
            verdicts["pred_var"] = self.pred_var_out_of_range()
        return verdicts

    def grad_norm_plateaued(self) -> bool:
        window, norms = self.cfg.grad_norm_window, self.state.grad_norms
        if len(norms) < 2 * window:
            return False
        previous, last = sum(norms[:window]) / window, sum(norms[window:]) / window
        return previous > 0 and abs(last - previous) / previous < self.cfg.grad_norm_ratio

    def pred_var_out_of_range(self) -> bool:
        var, low, high = self.state.last_pred_var, self.cfg.pred_var_min, self.cfg.pred_var_max
        if var is None or (low is None and high is None):
            return False
        return (low is not None and var < low) or (high is not None and var > high)

    def should_stop(self, ctx: DistContext, device) -> bool:
        """The collective decision; call it at the same point on every rank."""
        if not self.cfg.enabled:
            return False
        verdicts = self.local_verdicts()
        local = all(verdicts.values()) if self.cfg.mode == "all" else any(verdicts.values())
        stop = all_reduce_any(local, ctx, device)
        if stop and self.state.stopped_reason is None:
            self.state.stopped_reason = ",".join(k for k, v in verdicts.items() if v) or "another rank"
        return stop

    def state_dict(self) -> dict:
        return asdict(self.state)

    def load_state_dict(self, state: dict) -> None:
        self.state = EarlyStoppingState(**state)
