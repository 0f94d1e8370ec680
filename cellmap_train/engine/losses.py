"""Losses that ignore unknown voxels (NaN targets): a class not annotated in a crop is never
counted as background."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def _channel_view(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[C] -> [1, C, 1, ...] so it broadcasts over a batch of N, C, *spatial."""
    return values.to(like.device, like.dtype).view(1, -1, *([1] * (like.ndim - 2)))


class MaskedBCELoss(nn.Module):
    """Binary cross-entropy on logits, averaged over known voxels.

    pos_weight: one number or one per class, multiplying the positive term (the challenge's
    `weight_loss`, for sparse classes).
    """

    def __init__(self, pos_weight: float | Sequence[float] | None = None):
        super().__init__()
        weight = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32).reshape(-1)
        self.register_buffer("pos_weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        known = ~torch.isnan(target)
        target = torch.nan_to_num(target, nan=0.0).to(logits.dtype)
        pos_weight = None if self.pos_weight is None else _channel_view(self.pos_weight.expand(logits.shape[1]), logits)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight, reduction="none")
        return (loss * known).sum() / known.sum().clamp_min(1)
