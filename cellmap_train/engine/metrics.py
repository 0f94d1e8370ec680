"""Per-class Dice and IoU accumulated over a whole validation pass, unknown voxels excluded."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch


class OverlapCounter:
    """Sums true/false positives and negatives per class; Dice and IoU come from the sums, so
    the result is the score over everything seen, not a mean of per-batch scores."""

    def __init__(self, classes: Sequence[str]):
        self.classes = list(classes)
        self.tp = torch.zeros(len(classes), dtype=torch.float64)
        self.fp = torch.zeros_like(self.tp)
        self.fn = torch.zeros_like(self.tp)
        self.known = torch.zeros_like(self.tp)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        known = ~torch.isnan(target)
        pred = (logits > 0) & known
        truth = (torch.nan_to_num(target, nan=0.0) > 0.5) & known
        dims = [0, *range(2, target.ndim)]
        self.tp += (pred & truth).sum(dims).double().cpu()
        self.fp += (pred & ~truth).sum(dims).double().cpu()
        self.fn += (~pred & truth).sum(dims).double().cpu()
        self.known += known.sum(dims).double().cpu()

    def add_up(self, total: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Replace the counts by `total` of them (the sum over DDP ranks)."""
        self.tp, self.fp, self.fn, self.known = total(torch.stack([self.tp, self.fp, self.fn, self.known]))

    def scores(self) -> dict[str, float]:
        """dice/<class>, iou/<class>, dice/mean, iou/mean. A class with no known voxel, or with
        neither prediction nor truth anywhere, is NaN (missing) and left out of the means."""
        out: dict[str, float] = {}
        for i, cls in enumerate(self.classes):
            tp, fp, fn = self.tp[i].item(), self.fp[i].item(), self.fn[i].item()
            missing = self.known[i] == 0 or tp + fp + fn == 0
            out[f"dice/{cls}"] = math.nan if missing else 2 * tp / (2 * tp + fp + fn)
            out[f"iou/{cls}"] = math.nan if missing else tp / (tp + fp + fn)
        for metric in ("dice", "iou"):
            seen = [out[f"{metric}/{c}"] for c in self.classes if not math.isnan(out[f"{metric}/{c}"])]
            out[f"{metric}/mean"] = sum(seen) / len(seen) if seen else math.nan
        return out
