"""The training loop: plain PyTorch over plain objects, read top to bottom.

    state = checkpointer.start(...)            resume a full checkpoint / weights only / fresh
    for each epoch:
        for each step: train_step(...)         iterations_per_epoch optimizer steps, each on a fresh random batch
        end_epoch(...)                         validate, schedule, judge, log, checkpoint, prune, early stop

Everything arrives as plain objects (no Hydra here), so `fit` can be called from a notebook.
Resume is exact because training sample i is a pure function of (seed, i): the loader restarts
at sample `step * accumulation * batch_size`, and the RNG states come back from the checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field

import torch

from cellmap_train.engine import distributed
from cellmap_train.engine.checkpointer import Checkpointer
from cellmap_train.engine.epoch_end import check_best_metric, end_epoch
from cellmap_train.engine.prefetch import DeviceBatches
from cellmap_train.engine.progress import Progress
from cellmap_train.engine.run_state import Best, RunState
from cellmap_train.engine.settings import TrainSettings, pick_device, seed_everything, set_backends
from cellmap_train.engine.step import StepParts, build_step_parts, train_step
from cellmap_train.errors import TrainingInterrupted, UserError, first_line
from cellmap_train.host.stop_request import StopRequest


class OutOfMemory(UserError):
    pass


def out_of_memory(err: BaseException) -> OutOfMemory | None:
    """A GPU's out-of-memory error, or a CPU allocation the machine refused, as one line with the way out."""
    message = first_line(err)
    if not isinstance(err, torch.OutOfMemoryError) and "can't allocate memory" not in message:
        return None
    return OutOfMemory(f"out of memory ({message}): lower batch_size or input_array_info.shape, or train in "
                       f"trainer.amp=bf16 (trainer.gradient_accumulation_steps=N keeps the batch per optimizer step); "
                       f"checkpoints of earlier epochs are kept")


@dataclass
class FitResult:
    """What a run reports back (sweeps tabulate it; the optuna sweeper optimises `best_metric`).
    It covers the whole run across its processes (a run stopped and resumed is one run)."""

    best_metric: float = math.nan  # the best value of `best_metric_name` (trainer.best_metric, or its EMA)
    best_epoch: int | None = None
    best_metric_name: str | None = None
    first_metrics: dict = field(default_factory=dict)  # of the run's first epoch ({} when this process trained none)
    first_epoch: int | None = None  # the epoch first_metrics are of: 1, unless resumed from a checkpoint older than this field
    final_metrics: dict = field(default_factory=dict)
    epochs_done: int = 0
    steps: int = 0
    checkpoint: str | None = None
    best_checkpoint: str | None = None  # the file of best_epoch (kept when older ones are pruned)
    stopped_early: bool = False
    wall_time_s: float = 0.0  # time of all the run's processes so far, each counted from its fit's start
    earlier_wall_time_s: float = 0.0  # of that, the processes before this one (from the checkpoint resumed)


def fit(settings: TrainSettings, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler, criterion,
        data, logger=None, config: dict | None = None, stop: StopRequest | None = None) -> FitResult:
    """Train; under torchrun every rank calls this, and only rank 0 prints, logs and saves.
    `config`: the run's resolved config (plain dict), saved in each checkpoint; its `lr` against
    the checkpoint's tells a resume that the rate was changed on purpose.
    `stop`: a StopRequest the caller already holds (a sweep's job takes signals from its start,
    so one that comes during set-up stops it at its first step); by default fit holds its own."""
    info = distributed.init()
    # SIGTERM / Ctrl-C: finish the step, checkpoint it, stop
    with contextlib.nullcontext(stop) if stop is not None else StopRequest() as stop:
        try:
            if info.is_main:
                return _fit(settings, model, optimizer, scheduler, criterion, data, logger, config, info, stop)
            with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
                return _fit(settings, model, optimizer, scheduler, criterion, data, None, config, info, stop)
        except RuntimeError as err:  # torch.OutOfMemoryError is one
            oom = out_of_memory(err)
            if oom is None:
                raise
            raise oom from err


def _fit(settings: TrainSettings, model: torch.nn.Module, optimizer, scheduler, criterion, data, logger,
         config: dict | None, info: distributed.DistInfo, stop: StopRequest) -> FitResult:
    state = RunState(Best(settings.best_metric, settings.low_is_best, settings.best_metric_ema))
    check_best_metric(settings, data.classes)
    device = distributed.device_for(info, pick_device(settings.device))
    seed_everything(settings.seed, settings.deterministic)
    set_backends(settings, device)  # CPU threads, cuDNN autotuner
    parts = build_step_parts(settings, model, optimizer, scheduler, criterion, info, device)
    checkpointer = Checkpointer.from_settings(settings, config, info.is_main, state.best.tag)
    state = checkpointer.start(model, device, state)
    state.start_epoch = state.epoch
    if state.epoch >= settings.epochs:
        return nothing_to_train(state, settings, checkpointer)
    batches = DeviceBatches(data.train_loader(start_sample=state.step * parts.accumulate * data.batch_size,
                                              rank=info.rank, world_size=info.world_size), device, parts.channels_last)
    val_loader = data.val_loader(info.rank, info.world_size)  # each rank validates its share of the batches
    checkpointer.restore(state, optimizer, scheduler, parts.scaler, data.batch_size)  # after the loaders took their seeds
    progress = Progress(settings.epochs * settings.iterations_per_epoch, state.step,
                        settings.progress_bar and info.is_main, settings.log_every_n_steps,
                        settings.log_every_n_seconds)
    stopped_early = False
    model.train()
    with contextlib.closing(progress):
        for epoch in range(state.epoch + 1, settings.epochs + 1):
            progress.set_epoch(epoch, settings.epochs)
            epoch_start = time.perf_counter()
            # the position in the epoch lives in the state: a signal's checkpoint continues from it
            for state.epoch_steps in range(state.epoch_steps + 1, settings.iterations_per_epoch + 1):
                loss, lr = train_step(parts, batches, epoch, state.step + 1)
                state.step += 1
                if not math.isfinite(loss):  # trainer.skip_nonfinite_steps: no step taken, the batch counted
                    progress.line(f"loss is {loss} at epoch {epoch}, step {state.step}: step skipped")
                    continue
                smooth = state.add_step_loss(loss)
                if logger is not None:
                    logger.scalars({"loss/train": loss, "loss/train_smooth": smooth, "lr": lr}, state.step)
                progress.update(loss, smooth)
                if distributed.any_rank(stop.requested, info, device):  # a signal: checkpoint this step and stop
                    raise interrupted(stop, parts, state, checkpointer, data.batch_size)
            train_seconds = time.perf_counter() - epoch_start
            stopped_early = end_epoch(epoch, train_seconds, parts, settings, data, val_loader, state, checkpointer,
                                      logger, progress)
            if stopped_early:
                break
    identical = distributed.check_identical_weights(model, info)
    if identical:
        print(identical)
    return fit_result(state, checkpointer, stopped_early)


def fit_result(state: RunState, checkpointer: Checkpointer, stopped_early: bool = False) -> FitResult:
    best = state.best
    return FitResult(best_metric=best.value, best_epoch=best.epoch, best_metric_name=best.tag,
                     first_metrics=state.first_metrics, first_epoch=state.first_epoch, final_metrics=state.last_metrics,
                     epochs_done=state.epoch, steps=state.step, checkpoint=state.checkpoint,
                     best_checkpoint=checkpointer.best_checkpoint(state), stopped_early=stopped_early,
                     wall_time_s=state.wall_time_s(), earlier_wall_time_s=state.earlier_seconds)


def nothing_to_train(state: RunState, settings: TrainSettings, checkpointer: Checkpointer) -> FitResult:
    """A checkpoint at or past `epochs`: reported as what it holds (a finished job of a continued
    sweep keeps its row), with no first epoch of this process's own."""
    print(f"Nothing to train: the checkpoint is at epoch {state.epoch} and epochs={settings.epochs}.")
    state.first_metrics, state.first_epoch = {}, None
    return fit_result(state, checkpointer)


def interrupted(stop: StopRequest, parts: StepParts, state: RunState, checkpointer: Checkpointer,
                batch_size: int) -> TrainingInterrupted:
    """Checkpoint the step reached and say so in one line; the exception carries the run's
    result so far (the epochs it finished) for its record."""
    with distributed.main_first(parts.info):  # the other ranks exit after it is written (torchrun then stops the rest)
        path = checkpointer.save_partial(parts, state, batch_size)
    by = stop.signal_name or "a signal to another rank"
    result = fit_result(state, checkpointer)
    result.checkpoint = str(path)
    return TrainingInterrupted(f"stopped by {by} at epoch {state.epoch + 1}, step {state.step}: "
                               f"checkpoint {path} written; continue with load_model=latest", result)
