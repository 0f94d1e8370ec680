"""The training loop: plain PyTorch, one function, read top to bottom.

    resume from a full checkpoint / initialise from weights / start fresh
    for each epoch:
        iterations_per_epoch optimizer steps, each on a fresh random batch
        (gradient_accumulation_steps micro-batches, autocast, grad scaler, clipping, per-step scheduler;
         the next batch is fetched while the device computes this one)
        validate -> per-epoch scheduler -> best metric -> TensorBoard -> checkpoint -> prune -> early stop

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
from pathlib import Path

import torch

from cellmap_train.engine import distributed
from cellmap_train.engine.checkpoint import (
    best_epoch_from_logs, epoch_files, format_path, is_full, latest_checkpoint, load_training_state, load_weights,
    prune_checkpoints, read_checkpoint, rng_state, save_checkpoint,
)
from cellmap_train.engine.layout import apply_layout
from cellmap_train.engine.nonfinite import all_finite, first_nonfinite
from cellmap_train.engine.pause_hook import pause_point
from cellmap_train.engine.prefetch import DeviceBatches
from cellmap_train.engine.progress import Progress
from cellmap_train.engine.schedulers import WarmupCosineLR
from cellmap_train.engine.settings import TrainSettings, pick_device, seed_everything, set_backends
from cellmap_train.engine.validate import validate
from cellmap_train.errors import ConfigError, TrainingInterrupted, UserError
from cellmap_train.interrupt import StopRequest

PER_STEP_SCHEDULERS = (torch.optim.lr_scheduler.OneCycleLR, torch.optim.lr_scheduler.CyclicLR, WarmupCosineLR)
LOSS_SMOOTHING = 0.98  # EMA factor of loss/train_smooth (about the last 50 steps)


class NonFiniteLossError(UserError):
    pass


class OutOfMemory(UserError):
    pass


def out_of_memory(err: BaseException) -> OutOfMemory | None:
    """A GPU's out-of-memory error, or a CPU allocation the machine refused, as one line with the way out."""
    message = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if not isinstance(err, torch.OutOfMemoryError) and "can't allocate memory" not in message:
        return None
    return OutOfMemory(f"out of memory ({message}): lower batch_size or input_array_info.shape, or train in "
                       f"trainer.amp=bf16 (trainer.gradient_accumulation_steps=N keeps the batch per optimizer step); "
                       f"checkpoints of earlier epochs are kept")


@dataclass
class FitResult:
    """What a run reports back (sweeps tabulate it; the optuna sweeper optimises `best_metric`)."""

    best_metric: float = math.nan
    best_epoch: int | None = None
    first_metrics: dict = field(default_factory=dict)
    final_metrics: dict = field(default_factory=dict)
    epochs_done: int = 0
    steps: int = 0
    checkpoint: str | None = None
    best_checkpoint: str | None = None  # the file of best_epoch (kept when older ones are pruned)
    stopped_early: bool = False


def fit(settings: TrainSettings, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler, criterion,
        data, logger=None, config: dict | None = None, stop: StopRequest | None = None) -> FitResult:
    """Train; under torchrun every rank calls this, and only rank 0 prints, logs and saves.
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


def _fit(settings: TrainSettings, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler, criterion,
         data, logger, config: dict | None, info: distributed.DistInfo, stop: StopRequest) -> FitResult:
    check_best_metric(settings, data.classes)
    device = distributed.device_for(info, pick_device(settings.device))
    seed_everything(settings.seed, settings.deterministic)
    set_backends(settings, device)  # CPU threads, cuDNN autotuner
    model.to(device)
    channels_last = apply_layout(model, settings.channels_last, device)
    criterion = criterion.to(device) if isinstance(criterion, torch.nn.Module) else criterion
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[settings.amp]
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    schedule_per_step = steps_scheduler_per_step(settings, scheduler)
    train_model = distributed.wrap(model, info, device)  # DistributedDataParallel under torchrun
    train_model = torch.compile(train_model) if settings.compile else train_model
    accumulate = settings.gradient_accumulation_steps
    save_template = Path(settings.run_dir) / settings.model_save_path
    result = FitResult(best_metric=math.inf if settings.low_is_best else -math.inf)
    tracked = math.nan  # the value "best" is judged on: best_metric, or its EMA

    # ---- resume (full checkpoint), initialise (weights only), or start fresh
    start_epoch, step, resumed, found = 0, 0, None, None
    partial_steps, partial_loss = 0, 0.0  # of an epoch a signal interrupted
    if settings.load_model:
        found = find_checkpoint(settings)
        if found is None:
            print(f"No checkpoint for load_model={settings.load_model} matching "
                  f"{format_path(save_template, settings.model_to_load, '*')}: starting fresh.")
        else:
            name_epoch, path = found
            state = read_checkpoint(path, map_location=device)
            load_weights(model, state, path)
            if is_full(state) and settings.model_to_load == settings.model_name:
                resumed = (state, path)
                start_epoch, step = int(state["epoch"]), int(state["step"])
                result.best_metric = float(state.get("best_metric", result.best_metric))
                result.best_epoch = state.get("best_epoch")
                result.best_checkpoint = checkpoint_of_epoch(save_template, settings.model_name, result.best_epoch)
                tracked = float(state.get("tracked_metric", math.nan))
                partial_steps, partial_loss = int(state.get("epoch_steps", 0)), float(state.get("epoch_loss_sum", 0.0))
            elif settings.model_to_load == settings.model_name:
                # the challenge's weights-only files: keep its epoch numbering, so nothing is overwritten
                start_epoch, step = name_epoch, name_epoch * settings.iterations_per_epoch
                print(f"Initialised model weights from {path} (weights only: optimizer, scheduler and RNG start "
                      f"fresh); continuing at epoch {start_epoch + 1}.")
            else:
                print(f"Initialised model weights from {path}.")
    if start_epoch >= settings.epochs:
        print(f"Nothing to train: the checkpoint is at epoch {start_epoch} and epochs={settings.epochs}.")
        # reported as what the checkpoint holds (a finished job of a continued sweep keeps its row)
        result.epochs_done, result.steps, result.checkpoint = start_epoch, step, str(found[1]) if found else None
        if resumed is not None:  # its epoch's validation metrics, as saved with it
            result.final_metrics = {k: float(v) for k, v in resumed[0].get("metrics", {}).items()}

    batches = DeviceBatches(data.train_loader(start_sample=step * accumulate * data.batch_size, rank=info.rank,
                                              world_size=info.world_size), device, channels_last)
    val_loader = data.val_loader(info.rank, info.world_size)  # each rank validates its share of the batches
    if resumed is not None:  # after the loader took its seed, so the RNG continues where it stopped
        load_training_state(resumed[0], resumed[1], optimizer, scheduler, scaler)
        print(f"Resumed from {resumed[1]} (epoch {start_epoch}, step {step}).")
        later = [e for e in epoch_files(save_template, settings.model_name) if e > start_epoch]
        if later:  # load_model=best: say that the epochs after the best one are trained again
            print(f"Checkpoints of epochs {later[0]}..{later[-1]} will be replaced as those epochs are trained again.")
    progress = Progress(settings.epochs * settings.iterations_per_epoch, step, settings.progress_bar and info.is_main,
                        settings.log_every_n_steps)
    smooth_loss, smooth_weight = 0.0, 0.0
    model.train()
    for epoch in range(start_epoch + 1, settings.epochs + 1):
        progress.set_epoch(epoch, settings.epochs)
        epoch_start, loss_sum = time.perf_counter(), partial_loss
        for epoch_steps in range(partial_steps + 1, settings.iterations_per_epoch + 1):
            step_loss, inputs_finite = 0.0, None
            for micro in range(accumulate):
                raw, target = next(batches)
                inputs_finite = all_finite(raw, inputs_finite)  # read only if the loss is not finite
                with distributed.no_sync(train_model, last_micro_batch=micro == accumulate - 1):
                    with autocast:
                        loss = criterion(train_model(raw).float(), target) / accumulate
                    scaler.scale(loss).backward()
                batches.prefetch()  # while the device works on this micro-batch
                step_loss += loss.item()
            step_loss = distributed.mean_across_ranks(step_loss, info, device)
            pause_point("step")
            if not math.isfinite(step_loss):
                if not settings.skip_nonfinite_steps:
                    progress.close()
                    raise NonFiniteLossError(f"loss is {step_loss} at epoch {epoch}, step {step + 1}: "
                                             f"{first_nonfinite(inputs_finite, model)}; checkpoints of earlier epochs "
                                             f"are kept (trainer.skip_nonfinite_steps=true skips such steps)")
                optimizer.zero_grad(set_to_none=True)  # the batch still counts, so the sample stream stays aligned
                step += 1
                progress.line(f"loss is {step_loss} at epoch {epoch}, step {step}: step skipped")
                continue
            if settings.max_grad_norm:
                scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
                torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            lr = optimizer.param_groups[0]["lr"]  # the rate this step used
            if schedule_per_step:
                scheduler.step()
            step += 1
            loss_sum += step_loss
            smooth_loss = LOSS_SMOOTHING * smooth_loss + (1 - LOSS_SMOOTHING) * step_loss
            smooth_weight = LOSS_SMOOTHING * smooth_weight + (1 - LOSS_SMOOTHING)  # bias correction
            if logger is not None:
                logger.scalars({"loss/train": step_loss, "loss/train_smooth": smooth_loss / smooth_weight, "lr": lr}, step)
            progress.update(step_loss, smooth_loss / smooth_weight)
            if distributed.any_rank(stop.requested, info, device):  # a signal: checkpoint this step and stop
                progress.close()
                state = training_state(model, optimizer, scheduler, scaler, result, tracked, config)
                path = format_path(save_template, settings.model_name, epoch)
                result.steps, result.checkpoint = step, str(path)  # epochs_done: the epochs finished
                raise interrupted(stop, info, path, result,
                                  {**state, "epoch": epoch - 1, "step": step, "epoch_steps": epoch_steps, "epoch_loss_sum": loss_sum})
        partial_steps, partial_loss = 0, 0.0
        train_seconds = time.perf_counter() - epoch_start

        # ---- validate, schedule, judge, log, checkpoint
        distributed.sync_buffers(model, info)  # every rank validates the same model
        val = validate(model, val_loader, criterion, data.classes, device, autocast if amp_dtype else None,
                       settings.validation_time_limit, distributed.rank_share(settings.validation_batch_limit, info),
                       channels_last=channels_last, across_ranks=distributed.sum_across_ranks(info, device))
        metrics = {"loss/train_epoch": loss_sum / settings.iterations_per_epoch, **val.metrics,
                   "val/batches": val.batches, "val/coverage": val.fraction,
                   "throughput/samples_per_s": settings.iterations_per_epoch * accumulate * data.batch_size / train_seconds}
        if scheduler is not None and not schedule_per_step:
            step_epoch_scheduler(scheduler, metrics["loss/val"])
        tracked = smoothed(tracked, metrics.get(settings.best_metric, math.nan), settings.best_metric_ema)
        if settings.best_metric_ema is not None:
            metrics[ranking_tag(settings)] = tracked
        if is_better(tracked, result.best_metric, settings.low_is_best):
            result.best_metric, result.best_epoch = tracked, epoch
        if logger is not None:
            logger.scalars(metrics, epoch)  # epoch scalars use the epoch as their step
            if val.samples is not None:
                logger.images(*val.samples, data.classes, epoch)
            logger.flush()
        checkpoint = format_path(save_template, settings.model_name, epoch)
        if info.is_main:
            state = training_state(model, optimizer, scheduler, scaler, result, tracked, config)
            save_checkpoint({**state, "epoch": epoch, "step": step, "metrics": {k: float(v) for k, v in metrics.items()}},
                            checkpoint)
            prune_checkpoints(save_template, settings.model_name, settings.keep_last, keep=[result.best_epoch])
        result.final_metrics, result.epochs_done, result.steps, result.checkpoint = metrics, epoch, step, str(checkpoint)
        result.best_checkpoint = checkpoint_of_epoch(save_template, settings.model_name, result.best_epoch)
        result.first_metrics = result.first_metrics or metrics
        progress.line(epoch_line(epoch, settings.epochs, metrics, data.classes, val.coverage, train_seconds))
        since_best = epoch - (result.best_epoch or start_epoch)
        if settings.early_stopping_patience and since_best >= settings.early_stopping_patience:
            progress.line(f"Early stopping: no better {ranking_tag(settings)} for {since_best} epochs "
                          f"(best {result.best_metric:.4f} at epoch {result.best_epoch}).")
            result.stopped_early = True
            break
    progress.close()
    identical = distributed.check_identical_weights(model, info)
    if identical:
        print(identical)
    return result


def step_epoch_scheduler(scheduler, val_loss: float) -> None:
    """ReduceLROnPlateau steps on the validation loss; the others on the epoch alone."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_loss)
    else:
        scheduler.step()


def training_state(model, optimizer, scheduler, scaler, result: FitResult, tracked: float, config: dict | None) -> dict:
    """Everything of a checkpoint but the position (epoch, step) and the epoch's metrics."""
    return {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "optimizer_type": type(optimizer).__name__,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scheduler_type": type(scheduler).__name__ if scheduler is not None else None, "scaler": scaler.state_dict(),
        "best_metric": result.best_metric, "best_epoch": result.best_epoch, "tracked_metric": tracked,
        "rng": rng_state(), "config": config or {},
    }


def interrupted(stop: StopRequest, info: distributed.DistInfo, path: Path, result: FitResult,
                state: dict) -> TrainingInterrupted:
    """Checkpoint the step reached (under the name of the epoch in progress: load_model=latest
    continues inside it, and the finished epoch later replaces the file) and say so in one line."""
    with distributed.main_first(info):  # the other ranks exit after it is written (torchrun then stops the rest)
        if info.is_main:
            save_checkpoint(state, path)
    by = stop.signal_name or "a signal to another rank"
    return TrainingInterrupted(f"stopped by {by} at epoch {state['epoch'] + 1}, step {state['step']}: "
                               f"checkpoint {path} written; continue with load_model=latest", result)


def find_checkpoint(settings: TrainSettings) -> tuple[int, Path] | None:
    """(epoch, path) for load_model=latest (highest epoch in the name) or best (the best
    `best_metric`, or its EMA, in the TensorBoard logs, among the files that exist; averaged
    over `smoothing_window` epochs around each, as the challenge does)."""
    template = Path(settings.run_dir) / settings.model_save_path
    if settings.load_model == "latest":
        return latest_checkpoint(template, settings.model_to_load)
    files = epoch_files(template, settings.model_to_load)
    log_dir = format_path(Path(settings.run_dir) / settings.logs_save_path, settings.model_to_load, "")
    epoch = best_epoch_from_logs(log_dir, ranking_tag(settings), settings.low_is_best, settings.smoothing_window, among=files)
    return (epoch, files[epoch]) if epoch is not None else None


def check_best_metric(settings: TrainSettings, classes) -> None:
    known = ["loss/val", "loss/train_epoch", "dice/mean", "iou/mean", *(f"{m}/{c}" for m in ("dice", "iou") for c in classes)]
    if settings.best_metric not in known:
        raise ConfigError(f"trainer.best_metric={settings.best_metric!r}: must be one of {', '.join(known)}")


def steps_scheduler_per_step(settings: TrainSettings, scheduler) -> bool:
    if scheduler is None:
        return False
    if settings.scheduler_interval == "auto":
        return isinstance(scheduler, PER_STEP_SCHEDULERS)
    return settings.scheduler_interval == "step"


def checkpoint_of_epoch(template: Path, model_name: str, epoch: int | None) -> str | None:
    return str(format_path(template, model_name, epoch)) if epoch is not None else None


def ranking_tag(settings: TrainSettings) -> str:
    return settings.best_metric + ("_ema" if settings.best_metric_ema is not None else "")


def smoothed(previous: float, current: float, ema: float | None) -> float:
    """nnU-Net's smoothing: ema * previous + (1 - ema) * current; a missing (NaN) epoch keeps the previous."""
    if ema is None or math.isnan(previous):
        return current
    return previous if math.isnan(current) else ema * previous + (1 - ema) * current


def is_better(value: float, best: float, low_is_best: bool) -> bool:
    return math.isfinite(value) and (value < best if low_is_best else value > best)


def _fmt(value: float, digits: int) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def epoch_line(epoch: int, epochs: int, metrics: dict, classes, coverage: str, seconds: float) -> str:
    """One line per epoch; a class with no known voxel in what was validated shows as n/a."""
    dice = " ".join(f"{c}={_fmt(metrics.get(f'dice/{c}', math.nan), 3)}" for c in classes)
    return (f"epoch {epoch}/{epochs}: loss/train {_fmt(metrics['loss/train_epoch'], 4)}  "
            f"loss/val {_fmt(metrics['loss/val'], 4)}  dice/mean {_fmt(metrics['dice/mean'], 3)} ({dice})  "
            f"[train {seconds:.1f}s, val {coverage}]")
