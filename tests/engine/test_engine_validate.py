"""Validation: limits honoured and reported, unknown voxels and missing classes, losses."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, Subset

from cellmap_train.engine.epoch_end import epoch_line
from cellmap_train.engine.losses import MaskedBCEDiceLoss, MaskedBCELoss, MaskedSoftDiceLoss
from cellmap_train.engine.validate import validate

CPU = torch.device("cpu")


def test_batch_limit_stops_after_that_many_batches(tiny_data, conv_model):
    loader = tiny_data.val_loader()
    result = validate(conv_model(), loader, MaskedBCELoss(), tiny_data.classes, CPU, batch_limit=3)
    assert (result.batches, result.total_batches) == (3, len(loader))
    assert result.coverage.startswith(f"3/{len(loader)} batches in ")
    assert result.fraction == pytest.approx(3 / len(loader))


def test_time_limit_stops_early_but_sees_at_least_one_batch(tiny_data, conv_model):
    result = validate(conv_model(), tiny_data.val_loader(), MaskedBCELoss(), tiny_data.classes, CPU, time_limit=1e-9)
    assert result.batches == 1
    assert math.isfinite(result.metrics["loss/val"])


def test_without_limits_every_batch_is_seen(tiny_data, conv_model):
    loader = DataLoader(Subset(tiny_data.val_set, range(10)), batch_size=4)
    assert validate(conv_model(), loader, MaskedBCELoss(), tiny_data.classes, CPU).batches == len(loader)


def test_validation_does_not_move_the_training_rng(tiny_data, conv_model):
    model = conv_model()
    torch.manual_seed(3)
    validate(model, tiny_data.val_loader(), MaskedBCELoss(), tiny_data.classes, CPU, batch_limit=2)
    after = torch.rand(1)
    torch.manual_seed(3)
    assert torch.equal(after, torch.rand(1))


class Fixed(torch.nn.Module):
    """Returns the logits it was built with, whatever the input."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, raw):
        return self.logits


def test_missing_class_is_reported_as_missing_not_zero():
    logits = torch.tensor([5.0, -5.0, 5.0, -5.0]).view(1, 1, 2, 2).repeat(1, 3, 1, 1)
    target = torch.tensor([1.0, 0.0, 0.0, float("nan")]).view(1, 1, 2, 2).repeat(1, 3, 1, 1)
    target[:, 2] = float("nan")  # class "c" unknown everywhere in this crop
    batch = (torch.zeros(1, 1, 2, 2), target)
    metrics = validate(Fixed(logits), [batch], MaskedBCELoss(), ["a", "b", "c"], CPU).metrics
    # known voxels: pred 1,0,1 vs truth 1,0,0 -> tp 1, fp 1, fn 0
    assert metrics["dice/a"] == pytest.approx(2 / 3) and metrics["iou/a"] == pytest.approx(1 / 2)
    assert math.isnan(metrics["dice/c"]) and math.isnan(metrics["iou/c"])
    assert metrics["dice/mean"] == pytest.approx(2 / 3)  # the mean leaves the missing class out
    line = epoch_line(1, 1, {"loss/train_epoch": 0.5, **metrics}, ["a", "b", "c"], "1/1 batches in 0.0s", 0.1)
    assert "c=n/a" in line and "a=0.667" in line


@pytest.mark.parametrize("loss", [MaskedBCELoss(pos_weight=[1.0, 4.0]), MaskedSoftDiceLoss(), MaskedBCEDiceLoss()])
def test_losses_ignore_unknown_voxels_and_learn(loss):
    target = torch.tensor([[1.0, 0.0], [float("nan"), 1.0]]).view(1, 1, 2, 2).repeat(2, 2, 1, 1)
    logits = torch.zeros(2, 2, 2, 2, requires_grad=True)
    value = loss(logits, target)
    value.backward()
    assert math.isfinite(value.item())
    assert torch.all(logits.grad[:, :, 1, 0] == 0)  # the unknown voxel pushes nothing
    assert torch.all(logits.grad[:, :, 0, 0] < 0) and torch.all(logits.grad[:, :, 0, 1] > 0)
    # a class unknown everywhere adds nothing, and a fully unknown batch gives a zero loss
    changed = target.clone()
    changed[:, 1] = float("nan")
    assert math.isfinite(loss(logits, changed).item())
    assert loss(logits, torch.full_like(target, float("nan"))).item() == 0.0


def test_soft_dice_is_near_zero_for_a_perfect_prediction():
    target = torch.tensor([1.0, 0.0, 1.0, 0.0]).view(1, 1, 2, 2)
    assert MaskedSoftDiceLoss(smooth=1e-6)((target * 2 - 1) * 50, target).item() == pytest.approx(0.0, abs=1e-5)
