"""One optimizer step: `gradient_accumulation_steps` micro-batches under autocast, the grad
scaler, clipping, the optimizer and (for per-step schedules) the scheduler. The next batch is
fetched while the device computes this one."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from cellmap_train.engine import distributed
from cellmap_train.engine.checkpointer import TrainingObjects
from cellmap_train.engine.channels_last import apply_layout
from cellmap_train.engine.nonfinite import all_finite, first_nonfinite
from cellmap_train.engine.pause_hook import pause_point
from cellmap_train.engine.prefetch import DeviceBatches
from cellmap_train.engine.schedulers import WarmupCosineLR
from cellmap_train.engine.settings import TrainSettings
from cellmap_train.errors import UserError

PER_STEP_SCHEDULERS = (torch.optim.lr_scheduler.OneCycleLR, torch.optim.lr_scheduler.CyclicLR, WarmupCosineLR)
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}


class NonFiniteLossError(UserError):
    pass


def steps_scheduler_per_step(settings: TrainSettings, scheduler) -> bool:
    if scheduler is None:
        return False
    if settings.scheduler_interval == "auto":
        return isinstance(scheduler, PER_STEP_SCHEDULERS)
    return settings.scheduler_interval == "step"


@dataclass
class StepParts(TrainingObjects):
    """Everything a step and a validation pass use, set up once before the loop."""

    criterion: object = None
    train_model: torch.nn.Module | None = None  # what runs forward: the model under DDP and/or torch.compile
    device: torch.device = torch.device("cpu")
    info: distributed.DistInfo | None = None
    autocast: object = None  # an autocast context, or None without AMP
    channels_last: bool = False
    accumulate: int = 1
    max_grad_norm: float | None = None
    scheduler_per_step: bool = False
    skip_nonfinite: bool = False

    def autocast_or_null(self):
        return self.autocast or contextlib.nullcontext()


def build_step_parts(settings: TrainSettings, model: torch.nn.Module, optimizer, scheduler, criterion,
                     info: distributed.DistInfo, device: torch.device) -> StepParts:
    """Move the model (and a loss with buffers) to the device, choose its memory layout, and wrap
    it for DDP and torch.compile; the grad scaler is on for fp16 only."""
    model.to(device)
    channels_last = apply_layout(model, settings.channels_last, device)
    criterion = criterion.to(device) if isinstance(criterion, torch.nn.Module) else criterion
    amp_dtype = AMP_DTYPES[settings.amp]
    train_model = distributed.wrap(model, info, device)  # DistributedDataParallel under torchrun
    return StepParts(
        model, optimizer, scheduler, torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16),
        criterion=criterion, train_model=torch.compile(train_model) if settings.compile else train_model,
        device=device, info=info, autocast=torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else None,
        channels_last=channels_last, accumulate=settings.gradient_accumulation_steps,
        max_grad_norm=settings.max_grad_norm, scheduler_per_step=steps_scheduler_per_step(settings, scheduler),
        skip_nonfinite=settings.skip_nonfinite_steps)


def train_step(parts: StepParts, batches: DeviceBatches, epoch: int, step: int) -> tuple[float, float]:
    """Optimizer step number `step`: returns (its loss, mean over ranks; the learning rate it used).
    A non-finite loss stops the run naming the first non-finite tensor, or with
    trainer.skip_nonfinite_steps is returned without a step taken (the batch still counts, so the
    sample stream stays aligned)."""
    loss, inputs_finite = forward_backward(parts, batches)
    pause_point("step")
    if not math.isfinite(loss):
        if not parts.skip_nonfinite:
            raise NonFiniteLossError(f"loss is {loss} at epoch {epoch}, step {step}: "
                                     f"{first_nonfinite(inputs_finite, parts.model)}; checkpoints of earlier epochs "
                                     f"are kept (trainer.skip_nonfinite_steps=true skips such steps)")
        parts.optimizer.zero_grad(set_to_none=True)
        return loss, parts.optimizer.param_groups[0]["lr"]
    if parts.max_grad_norm:
        parts.scaler.unscale_(parts.optimizer)  # clip the true gradients, not the fp16-scaled ones
        torch.nn.utils.clip_grad_norm_(parts.model.parameters(), parts.max_grad_norm)
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    parts.optimizer.zero_grad(set_to_none=True)
    lr = parts.optimizer.param_groups[0]["lr"]  # the rate this step used
    if parts.scheduler_per_step:
        parts.scheduler.step()
    return loss, lr


def forward_backward(parts: StepParts, batches: DeviceBatches) -> tuple[float, torch.Tensor | None]:
    """The micro-batches' gradients (summed; DDP syncs on the last) and their loss, mean across
    ranks; also whether every input was finite (read only when the loss is not)."""
    loss_sum, inputs_finite = 0.0, None
    for micro in range(parts.accumulate):
        raw, target = next(batches)
        inputs_finite = all_finite(raw, inputs_finite)
        with distributed.no_sync(parts.train_model, last_micro_batch=micro == parts.accumulate - 1):
            with parts.autocast_or_null():
                loss = parts.criterion(parts.train_model(raw).float(), target) / parts.accumulate
            parts.scaler.scale(loss).backward()
        batches.prefetch()  # while the device works on this micro-batch
        loss_sum += loss.item()
    return distributed.mean_across_ranks(loss_sum, parts.info, parts.device), inputs_finite
