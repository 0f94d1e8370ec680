"""What a run carries from epoch to epoch and from process to process (through its checkpoint):
its position, its one notion of "best", the smoothing of loss/train_smooth, its first epoch's
metrics and the training time spent so far. The model, optimizer, scheduler, scaler and RNG keep
their own state dicts; everything else that survives a resume lives here."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

LOSS_SMOOTHING = 0.98  # EMA factor of loss/train_smooth (about the last 50 steps)


def smoothed(previous: float, current: float, ema: float | None) -> float:
    """nnU-Net's smoothing: ema * previous + (1 - ema) * current; a missing (NaN) epoch keeps the previous."""
    if ema is None or math.isnan(previous):
        return current
    return previous if math.isnan(current) else ema * previous + (1 - ema) * current


def is_better(value: float, best: float, low_is_best: bool) -> bool:
    return math.isfinite(value) and (value < best if low_is_best else value > best)


@dataclass
class Best:
    """The run's one notion of "best": `metric` (trainer.best_metric), or its EMA when `ema` is set
    (nnU-Net ranks epochs so), judged each epoch; `tag` names what is ranked (in the logs too)."""

    metric: str = "dice/mean"
    low_is_best: bool = False
    ema: float | None = None
    tracked: float = math.nan  # this epoch's value of `tag`
    value: float | None = None  # the best `tracked` so far (+-inf before any)
    epoch: int | None = None

    def __post_init__(self):
        if self.value is None:
            self.value = math.inf if self.low_is_best else -math.inf

    @property
    def tag(self) -> str:
        return self.metric + ("_ema" if self.ema is not None else "")

    def judge(self, epoch: int, metrics: dict) -> None:
        """Track this epoch's metric (adding its EMA to `metrics` under `tag`) and keep it if better."""
        self.tracked = smoothed(self.tracked, metrics.get(self.metric, math.nan), self.ema)
        if self.ema is not None:
            metrics[self.tag] = self.tracked
        if is_better(self.tracked, self.value, self.low_is_best):
            self.value, self.epoch = self.tracked, epoch

    def to_checkpoint(self) -> dict:
        return {"best_metric": self.value, "best_epoch": self.epoch, "tracked_metric": self.tracked}

    def load(self, state: dict) -> None:
        self.value = float(state.get("best_metric", self.value))
        self.epoch = state.get("best_epoch")
        self.tracked = float(state.get("tracked_metric", math.nan))


@dataclass
class LossSmoothing:
    """loss/train_smooth: an EMA of the step losses, bias-corrected (so the first steps are not
    pulled towards zero); both sums travel in the checkpoint, so a resumed run's curve goes on."""

    total: float = 0.0
    weight: float = 0.0

    def add(self, loss: float) -> float:
        self.total = LOSS_SMOOTHING * self.total + (1 - LOSS_SMOOTHING) * loss
        self.weight = LOSS_SMOOTHING * self.weight + (1 - LOSS_SMOOTHING)
        return self.total / self.weight


@dataclass
class RunState:
    """The loop's running state; `to_checkpoint` / `from_checkpoint` are its part of a checkpoint."""

    best: Best
    epoch: int = 0  # epochs finished
    step: int = 0  # optimizer steps taken (skipped non-finite ones included: the sample stream counts them)
    epoch_steps: int = 0  # steps done in the epoch in progress (a signal stopped it there)
    epoch_loss_sum: float = 0.0
    smoothing: LossSmoothing = field(default_factory=LossSmoothing)
    first_metrics: dict = field(default_factory=dict)  # of the run's first epoch, whichever process trained it
    first_epoch: int | None = None  # the epoch first_metrics are of (1, unless an old checkpoint lacked them)
    last_metrics: dict = field(default_factory=dict)
    checkpoint: str | None = None  # the last one written (or resumed from)
    start_epoch: int = 0  # the epoch this process started after (not saved: early stopping counts from it)
    earlier_seconds: float = 0.0  # training time of the run's earlier processes
    clock: float = field(default_factory=time.perf_counter)  # when this process started training

    def wall_time_s(self) -> float:
        return self.earlier_seconds + time.perf_counter() - self.clock

    def add_step_loss(self, loss: float) -> float:
        """Count a finished step's loss into the epoch's mean; returns the smoothed loss."""
        self.epoch_loss_sum += loss
        return self.smoothing.add(loss)

    def finish_epoch(self, epoch: int, metrics: dict, checkpoint: str) -> None:
        self.epoch, self.epoch_steps, self.epoch_loss_sum = epoch, 0, 0.0
        self.last_metrics, self.checkpoint = metrics, checkpoint
        if not self.first_metrics:
            self.first_metrics, self.first_epoch = metrics, epoch

    def to_checkpoint(self) -> dict:
        return {
            **self.best.to_checkpoint(), "epoch": self.epoch, "step": self.step,
            "epoch_steps": self.epoch_steps, "epoch_loss_sum": self.epoch_loss_sum,  # of an epoch a signal stopped
            "loss_smoothing": [self.smoothing.total, self.smoothing.weight],
            "first_metrics": floats(self.first_metrics), "first_epoch": self.first_epoch,
            "wall_time_s": self.wall_time_s(),
        }

    def load(self, state: dict) -> None:
        """Take a full checkpoint's part; fields an older checkpoint lacks keep their fresh values
        (the smoothing restarts, first_metrics become this process's first epoch's, the time counts from here)."""
        self.best.load(state)
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.epoch_steps, self.epoch_loss_sum = int(state.get("epoch_steps", 0)), float(state.get("epoch_loss_sum", 0.0))
        self.smoothing = LossSmoothing(*state.get("loss_smoothing", (0.0, 0.0)))
        self.first_metrics = dict(state.get("first_metrics") or {})
        self.first_epoch = state.get("first_epoch") if self.first_metrics else None
        self.last_metrics = floats(state.get("metrics", {}))
        self.earlier_seconds = float(state.get("wall_time_s", 0.0))


def floats(metrics: dict) -> dict:
    return {key: float(value) for key, value in metrics.items()}
