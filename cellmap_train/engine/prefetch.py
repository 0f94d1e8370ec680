"""Training batches on the device, fetched one step ahead."""

from __future__ import annotations

from typing import Iterable, Iterator

import torch

from cellmap_train.engine.channels_last import to_channels_last
from cellmap_train.data.label_transfer import as_float


class DeviceBatches:
    """`next()` gives the next (raw, target) on `device`; `prefetch()` takes the following one
    from the loader and starts its copy. The loop calls `prefetch()` once a micro-batch's
    forward and backward are queued and before it reads the loss back, so on a GPU the host
    waits on the DataLoader (a few ms per batch to receive it from a worker) while the device
    computes, not between steps while the device idles. On a CPU the order changes nothing.
    With `channels_last`, raw batches are handed over in the layout the model's weights use;
    uint8 labels arrive as float32 with NaN = unknown (`cellmap_train/data/label_transfer.py`)."""

    def __init__(self, batches: Iterable, device: torch.device, channels_last: bool = False):
        self.batches: Iterator = iter(batches)
        self.device = device
        self.channels_last = channels_last
        self.ready: tuple[torch.Tensor, torch.Tensor] | None = None

    def prefetch(self) -> None:
        if self.ready is None:
            raw, target = next(self.batches)
            raw, target = raw.to(self.device, non_blocking=True), target.to(self.device, non_blocking=True)
            target = as_float(target)  # uint8 on the way, float32 + NaN where it is read (on the device)
            self.ready = (to_channels_last(raw) if self.channels_last else raw), target

    def __iter__(self) -> "DeviceBatches":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.prefetch()
        batch, self.ready = self.ready, None
        return batch
