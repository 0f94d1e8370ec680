"""The end of an epoch: validate -> per-epoch scheduler -> judge "best" -> TensorBoard ->
checkpoint (and prune) -> one line -> early stop."""

from __future__ import annotations

import math

import torch

from cellmap_train.engine import distributed
from cellmap_train.engine.checkpointer import Checkpointer
from cellmap_train.engine.progress import Progress
from cellmap_train.engine.run_state import RunState
from cellmap_train.engine.settings import TrainSettings
from cellmap_train.engine.step import StepParts
from cellmap_train.engine.validate import ValidationResult, validate
from cellmap_train.errors import ConfigError


def end_epoch(epoch: int, train_seconds: float, parts: StepParts, settings: TrainSettings, data, val_loader,
              state: RunState, checkpointer: Checkpointer, logger, progress: Progress) -> bool:
    """Everything after an epoch's steps; True when early stopping ends the run."""
    val = validate_epoch(parts, settings, data.classes, val_loader)
    metrics = {"loss/train_epoch": state.epoch_loss_sum / settings.iterations_per_epoch, **val.metrics,
               "val/batches": val.batches, "val/coverage": val.fraction,
               "throughput/samples_per_s": settings.iterations_per_epoch * parts.accumulate * data.batch_size / train_seconds}
    if parts.scheduler is not None and not parts.scheduler_per_step:
        step_epoch_scheduler(parts.scheduler, metrics["loss/val"])
    state.best.judge(epoch, metrics)
    if logger is not None:
        logger.scalars(metrics, epoch)  # epoch scalars use the epoch as their step
        if val.samples is not None:
            logger.images(*val.samples, data.classes, epoch)
        logger.flush()
    state.finish_epoch(epoch, metrics, str(checkpointer.path(epoch)))
    checkpointer.save(parts, state, metrics, data.batch_size)
    progress.line(epoch_line(epoch, settings.epochs, metrics, data.classes, val.coverage, train_seconds))
    return stops_early(settings, state, progress)


def validate_epoch(parts: StepParts, settings: TrainSettings, classes, val_loader) -> ValidationResult:
    """Loss and per-class Dice on the validation set within its limits; under DDP each rank
    validates its share of the batches, of the same model."""
    distributed.sync_buffers(parts.model, parts.info)
    return validate(parts.model, val_loader, parts.criterion, classes, parts.device, parts.autocast,
                    settings.validation_time_limit, distributed.rank_share(settings.validation_batch_limit, parts.info),
                    channels_last=parts.channels_last, across_ranks=distributed.sum_across_ranks(parts.info, parts.device))


def step_epoch_scheduler(scheduler, val_loss: float) -> None:
    """ReduceLROnPlateau steps on the validation loss; the others on the epoch alone."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_loss)
    else:
        scheduler.step()


def stops_early(settings: TrainSettings, state: RunState, progress: Progress) -> bool:
    """No better `best` for early_stopping_patience epochs (counted from this process's start
    while there is no best at all)."""
    best = state.best
    since_best = state.epoch - (best.epoch or state.start_epoch)
    if not settings.early_stopping_patience or since_best < settings.early_stopping_patience:
        return False
    progress.line(f"Early stopping: no better {best.tag} for {since_best} epochs "
                  f"(best {best.value:.4f} at epoch {best.epoch}).")
    return True


def check_best_metric(settings: TrainSettings, classes) -> None:
    known = ["loss/val", "loss/train_epoch", "dice/mean", "iou/mean", *(f"{m}/{c}" for m in ("dice", "iou") for c in classes)]
    if settings.best_metric not in known:
        raise ConfigError(f"trainer.best_metric={settings.best_metric!r}: must be one of {', '.join(known)}")


def _fmt(value: float, digits: int) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def epoch_line(epoch: int, epochs: int, metrics: dict, classes, coverage: str, seconds: float) -> str:
    """One line per epoch; a class with no known voxel in what was validated shows as n/a."""
    dice = " ".join(f"{c}={_fmt(metrics.get(f'dice/{c}', math.nan), 3)}" for c in classes)
    return (f"epoch {epoch}/{epochs}: loss/train {_fmt(metrics['loss/train_epoch'], 4)}  "
            f"loss/val {_fmt(metrics['loss/val'], 4)}  dice/mean {_fmt(metrics['dice/mean'], 3)} ({dice})  "
            f"[train {seconds:.1f}s, val {coverage}]")
