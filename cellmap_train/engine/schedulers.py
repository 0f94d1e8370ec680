"""Learning-rate schedules torch lacks as one class."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class WarmupCosineLR(LRScheduler):
    """Linear warm-up from `warmup_start_factor` x lr over the first `warmup_pct` of the
    `epochs x steps_per_epoch` optimizer steps, then a cosine down to `eta_min`; stepped every
    optimizer step. The usual schedule for transformers (model=vitnet at full size), where large
    first steps through freshly initialised attention can diverge. Its state (the step reached)
    resumes with the run."""

    def __init__(self, optimizer: Optimizer, epochs: int, steps_per_epoch: int, warmup_pct: float = 0.05,
                 eta_min: float = 0.0, warmup_start_factor: float = 0.01, last_epoch: int = -1):
        if not 0 <= warmup_pct < 1:
            raise ValueError(f"warmup_pct must be in [0, 1), got {warmup_pct}")
        if not 0 < warmup_start_factor <= 1:
            raise ValueError(f"warmup_start_factor must be in (0, 1], got {warmup_start_factor}")
        if eta_min < 0:
            raise ValueError(f"eta_min must be >= 0, got {eta_min}")
        self.total_steps = int(epochs) * int(steps_per_epoch)
        if self.total_steps < 1:
            raise ValueError(f"epochs x steps_per_epoch must be >= 1, got {epochs} x {steps_per_epoch}")
        self.warmup_steps = round(warmup_pct * self.total_steps)
        self.eta_min, self.warmup_start_factor = float(eta_min), float(warmup_start_factor)
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        """The multiplier at optimizer step `step` (0 = the first): of the base lr during the
        warm-up, of the way from eta_min to it after."""
        if step < self.warmup_steps:
            return self.warmup_start_factor + (1 - self.warmup_start_factor) * step / self.warmup_steps
        done = min(step - self.warmup_steps, self.total_steps - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * done))

    def get_lr(self) -> list[float]:
        factor = self.factor(self.last_epoch)
        if self.last_epoch < self.warmup_steps:  # warm-up scales the base lr itself, from a small start
            return [base * factor for base in self.base_lrs]
        return [self.eta_min + (base - self.eta_min) * factor for base in self.base_lrs]
