"""One validation pass: loss and per-class Dice/IoU over the validation tiles, within the
configured time and batch limits."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch

from cellmap_train.engine.metrics import OverlapCounter
from cellmap_train.engine.pause_hook import pause_point
from cellmap_train.engine.prefetch import DeviceBatches


@dataclass
class ValidationResult:
    metrics: dict[str, float]
    batches: int
    total_batches: int | None
    seconds: float
    samples: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def fraction(self) -> float:
        """Share of the validation set seen (NaN when its length is unknown)."""
        return self.batches / self.total_batches if self.total_batches else math.nan

    @property
    def coverage(self) -> str:
        total = "?" if self.total_batches is None else self.total_batches
        return f"{self.batches}/{total} batches in {self.seconds:.1f}s"


@torch.no_grad()
def validate(model: torch.nn.Module, loader: Iterable, criterion, classes: Sequence[str], device: torch.device,
             autocast: contextlib.AbstractContextManager | None = None, time_limit: float | None = None,
             batch_limit: int | None = None, keep_samples: int = 4, channels_last: bool = False,
             across_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None) -> ValidationResult:
    """Averages over what was seen; stops after `batch_limit` batches or once `time_limit` s
    have passed (at least one batch is always seen, unless batch_limit is 0). Raw batches go in
    with the layout the training uses (`channels_last`). Keeps the first `keep_samples`
    (raw, target, probability) triples for TensorBoard images. Runs in a fork of the torch RNG,
    so how much is validated never changes the training that follows (exact resume).

    Under DDP each rank validates its own share of the batches and `across_ranks` (a sum over
    the ranks) adds up the loss, the overlap counts and the batches: every rank then holds the
    same metrics, so schedulers and early stopping decide alike everywhere."""
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        return _validate(model, loader, criterion, classes, device, autocast, time_limit, batch_limit, keep_samples,
                         channels_last, across_ranks)


def _validate(model, loader, criterion, classes, device, autocast, time_limit, batch_limit, keep_samples,
              channels_last, across_ranks) -> ValidationResult:
    was_training = model.training
    model.eval()
    counter = OverlapCounter(classes)
    loss_sum, loss_weight, batches = 0.0, 0, 0
    samples = None
    start = time.perf_counter()
    try:
        total = len(loader)
    except TypeError:
        total = None
    # iterated without prefetch(), DeviceBatches reads no batch ahead that a limit would then waste
    for raw, target in DeviceBatches(loader, device, channels_last) if batch_limit != 0 else ():
        with autocast or contextlib.nullcontext():
            logits = model(raw)
        logits = logits.float()
        known = int((~torch.isnan(target)).sum())
        if known:
            loss_sum += float(criterion(logits, target)) * known
            loss_weight += known
        counter.update(logits, target)
        if samples is None:
            samples = (raw[:keep_samples].float().cpu(), target[:keep_samples].cpu(), torch.sigmoid(logits[:keep_samples]).cpu())
        batches += 1
        pause_point("validation")
        # checked after a batch, so no batch is read that is then thrown away
        if batch_limit is not None and batches >= batch_limit:
            break
        if time_limit is not None and time.perf_counter() - start >= time_limit:
            break
    model.train(was_training)
    if across_ranks is not None:
        sums = across_ranks(torch.tensor([loss_sum, loss_weight, batches, total or 0], dtype=torch.float64))
        loss_sum, loss_weight, batches, total = sums[0].item(), sums[1].item(), int(sums[2]), int(sums[3]) or None
        counter.add_up(across_ranks)
    metrics = {"loss/val": loss_sum / loss_weight if loss_weight else math.nan, **counter.scores()}
    return ValidationResult(metrics, batches, total, time.perf_counter() - start, samples)
