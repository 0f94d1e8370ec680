"""The training loop: plain PyTorch, one function, read top to bottom.

    for each epoch:
        iterations_per_epoch optimizer steps, each on a fresh random batch
        (gradient_accumulation_steps micro-batches, autocast, grad scaler, clipping)
        validate -> scheduler step -> TensorBoard -> checkpoint

Everything arrives as plain objects (no Hydra here), so `fit` can be called from a notebook.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from cellmap_train.engine.checkpoint import (
    best_epoch_from_logs, epoch_files, format_path, is_full, latest_checkpoint, load_weights, read_checkpoint, rng_state,
    save_checkpoint, set_rng_state,
)
from cellmap_train.engine.settings import TrainSettings, pick_device, seed_everything
from cellmap_train.engine.validate import validate
from cellmap_train.errors import UserError

PER_STEP_SCHEDULERS = (torch.optim.lr_scheduler.OneCycleLR, torch.optim.lr_scheduler.CyclicLR)


class NonFiniteLossError(UserError):
    pass


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


def fit(settings: TrainSettings, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler, criterion,
        data, logger=None, config: dict | None = None) -> FitResult:
    device = pick_device(settings.device)
    seed_everything(settings.seed, settings.deterministic)
    model.to(device)
    criterion = criterion.to(device) if isinstance(criterion, torch.nn.Module) else criterion
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[settings.amp]
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    per_step_schedule = isinstance(scheduler, PER_STEP_SCHEDULERS)
    train_model = torch.compile(model) if settings.compile else model
    accumulate = settings.gradient_accumulation_steps
    save_template = Path(settings.run_dir) / settings.model_save_path
    result = FitResult(best_metric=math.inf if settings.low_is_best else -math.inf)

    # ---- resume (full checkpoint) or initialise (weights only), or start fresh
    start_epoch, step = 0, 0
    if settings.load_model:
        path = find_checkpoint(settings, save_template, logger)
        if path is None:
            print(f"No checkpoint matching {format_path(save_template, settings.model_to_load, '*')}: starting fresh.")
        else:
            state = read_checkpoint(path, map_location=device)
            load_weights(model, state, path)
            if is_full(state) and settings.model_to_load == settings.model_name:
                optimizer.load_state_dict(state["optimizer"])
                if scheduler is not None and state.get("scheduler"):
                    scheduler.load_state_dict(state["scheduler"])
                scaler.load_state_dict(state.get("scaler") or {})
                start_epoch, step = int(state["epoch"]), int(state["step"])
                result.best_metric = float(state.get("best_metric", result.best_metric))
                result.best_epoch = state.get("best_epoch")
                set_rng_state(state["rng"])
                print(f"Resumed from {path} (epoch {start_epoch}, step {step}).")
            else:
                print(f"Initialised model weights from {path}.")

    batches = iter(data.train_loader(start_sample=step * accumulate * data.batch_size))
    val_loader = data.val_loader()
    interactive = settings.progress_bar and sys.stderr.isatty()
    model.train()
    for epoch in range(start_epoch + 1, settings.epochs + 1):
        epoch_start, loss_sum = time.perf_counter(), 0.0
        bar = tqdm(range(settings.iterations_per_epoch), desc=f"epoch {epoch}/{settings.epochs}", unit="it",
                   disable=not interactive, dynamic_ncols=True, leave=False)
        for _ in bar:
            step_loss = 0.0
            for _ in range(accumulate):
                raw, target = next(batches)
                raw, target = raw.to(device, non_blocking=True), target.to(device, non_blocking=True)
                with autocast:
                    loss = criterion(train_model(raw).float(), target) / accumulate
                scaler.scale(loss).backward()
                step_loss += loss.item()
            if not math.isfinite(step_loss):
                raise NonFiniteLossError(f"loss is {step_loss} at epoch {epoch}, step {step + 1}; last good checkpoint kept")
            if settings.max_grad_norm:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if per_step_schedule:
                scheduler.step()
            step += 1
            loss_sum += step_loss
            bar.set_postfix(loss=f"{step_loss:.4f}")
            if logger is not None:
                logger.scalars({"loss/train": step_loss}, step)
        bar.close()
        train_seconds = time.perf_counter() - epoch_start

        # ---- validate, schedule, log, checkpoint
        val = validate(model, val_loader, criterion, data.classes, device, autocast if amp_dtype else None,
                       settings.validation_time_limit, settings.validation_batch_limit)
        metrics = {"loss/train_epoch": loss_sum / settings.iterations_per_epoch, **val.metrics,
                   "lr": optimizer.param_groups[0]["lr"],
                   "throughput/samples_per_s": settings.iterations_per_epoch * accumulate * data.batch_size / train_seconds}
        if scheduler is not None and not per_step_schedule:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(metrics["loss/val"])
            else:
                scheduler.step()
        current = metrics.get(settings.best_metric, math.nan)
        improved = math.isfinite(current) and (current < result.best_metric if settings.low_is_best else current > result.best_metric)
        if improved:
            result.best_metric, result.best_epoch = current, epoch
        if logger is not None:
            logger.scalars(metrics, epoch)
            if val.samples is not None:
                logger.images(*val.samples, data.classes, epoch)
            logger.flush()
        checkpoint = save_checkpoint({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None, "scaler": scaler.state_dict(),
            "epoch": epoch, "step": step, "best_metric": result.best_metric, "best_epoch": result.best_epoch,
            "metrics": {k: float(v) for k, v in metrics.items()}, "rng": rng_state(), "config": config or {},
        }, format_path(save_template, settings.model_name, epoch))
        result.final_metrics, result.epochs_done, result.steps, result.checkpoint = metrics, epoch, step, str(checkpoint)
        result.first_metrics = result.first_metrics or metrics
        print(_epoch_line(epoch, settings.epochs, metrics, data.classes, val.coverage, train_seconds), flush=True)
    return result


def find_checkpoint(settings: TrainSettings, save_template: Path, logger) -> Path | None:
    """load_model=latest: highest epoch; best: the epoch with the best `best_metric` in the logs."""
    if settings.load_model == "best":
        log_dir = getattr(logger, "log_dir", None)
        epoch = best_epoch_from_logs(log_dir, settings.best_metric, settings.low_is_best) if log_dir else None
        return epoch_files(save_template, settings.model_to_load).get(epoch) if epoch is not None else None
    return latest_checkpoint(save_template, settings.model_to_load)


def _epoch_line(epoch: int, epochs: int, metrics: dict, classes, coverage: str, seconds: float) -> str:
    dice = " ".join(f"{c}={metrics.get(f'dice/{c}', math.nan):.3f}" for c in classes)
    return (f"epoch {epoch}/{epochs}: loss/train {metrics['loss/train_epoch']:.4f}  loss/val {metrics['loss/val']:.4f}  "
            f"dice/mean {metrics['dice/mean']:.3f} ({dice})  [train {seconds:.1f}s, val {coverage}]")
