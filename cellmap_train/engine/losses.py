"""Losses that ignore unknown voxels (NaN targets): a class not annotated in a crop is never
counted as background."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from cellmap_train.errors import ConfigError


def _channel_view(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[C] -> [1, C, 1, ...] so it broadcasts over a batch of N, C, *spatial."""
    return values.to(like.device, like.dtype).view(1, -1, *([1] * (like.ndim - 2)))


def check_shapes(logits: torch.Tensor, target: torch.Tensor) -> None:
    """One line instead of torch's broadcasting error (or a silent broadcast) when a model's output
    and the labels differ; the preflight catches it before training for models it can run on meta."""
    if logits.shape != target.shape:
        raise ConfigError(f"the model's output {list(logits.shape)} and the labels {list(target.shape)} differ in shape: "
                          f"target_array_info.shape must be what the model outputs for input_array_info.shape")


class MaskedBCELoss(nn.Module):
    """Binary cross-entropy on logits, averaged over known voxels.

    pos_weight: one number or one per class, multiplying the positive term (the challenge's
    `weight_loss`, for sparse classes).
    """

    def __init__(self, pos_weight: float | Sequence[float] | None = None):
        super().__init__()
        if isinstance(pos_weight, str):  # `auto` is worked out from the training crops by a run, before the loss is made
            raise ConfigError(f"pos_weight={pos_weight!r}: give numbers here (a run turns loss.pos_weight=auto into "
                              f"them: CellMapData.positive_weights())")
        weight = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32).reshape(-1)
        self.register_buffer("pos_weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_shapes(logits, target)
        known = ~torch.isnan(target)
        target = torch.nan_to_num(target, nan=0.0).to(logits.dtype)
        pos_weight = None if self.pos_weight is None else _channel_view(self.pos_weight.expand(logits.shape[1]), logits)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight, reduction="none")
        return (loss * known).sum() / known.sum().clamp_min(1)


class MaskedSoftDiceLoss(nn.Module):
    """1 - soft Dice of sigmoid(logits), per class over the whole batch and known voxels only,
    averaged over the classes that have a known voxel in the batch.

    smooth: added to numerator and denominator, so a class absent from both prediction and
    truth scores ~1 instead of 0/0.
    """

    def __init__(self, smooth: float = 1.0):
        super().__init__()
        self.smooth = float(smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_shapes(logits, target)
        known = (~torch.isnan(target)).to(logits.dtype)
        prob = torch.sigmoid(logits) * known
        truth = torch.nan_to_num(target, nan=0.0).to(logits.dtype) * known
        dims = [0, *range(2, logits.ndim)]
        overlap = (prob * truth).sum(dims)
        total = prob.sum(dims) + truth.sum(dims)
        dice = (2 * overlap + self.smooth) / (total + self.smooth)
        has_known = known.sum(dims) > 0
        if not has_known.any():
            return logits.sum() * 0.0  # keeps the graph; nothing to learn from this batch
        return 1 - dice[has_known].mean()


class MaskedBCEDiceLoss(nn.Module):
    """bce_weight * masked BCE + dice_weight * masked soft Dice (nnU-Net's default pairing)."""

    def __init__(self, pos_weight: float | Sequence[float] | None = None, smooth: float = 1.0,
                 bce_weight: float = 1.0, dice_weight: float = 1.0):
        super().__init__()
        self.bce, self.dice = MaskedBCELoss(pos_weight), MaskedSoftDiceLoss(smooth)
        self.bce_weight, self.dice_weight = float(bce_weight), float(dice_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.bce_weight * self.bce(logits, target) + self.dice_weight * self.dice(logits, target)
