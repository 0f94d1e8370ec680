"""Helpers for the engine tests: the real demo data at a tiny size, small models, settings."""

from __future__ import annotations

import pytest
import torch

CLASSES = ["nuc", "er", "mito"]


@pytest.fixture
def tiny_data(demo_root, tmp_path):
    """CellMapData over the session's demo datasets: 2 samples of 1x32x32 per batch, no workers."""
    from cellmap_train.data import CellMapData
    from cellmap_train.data.transforms import BinarizeLabels, NormalizeRaw, SampleTransforms

    values = SampleTransforms(raw=NormalizeRaw(), target=BinarizeLabels())
    return CellMapData(search_path=str(demo_root), datasplit_path=tmp_path / "datasplit.csv", classes=CLASSES,
                       input_array_info={"shape": [1, 32, 32], "scale": [8, 8, 8]}, batch_size=2,
                       validation_prob=0.3, seed=7, dataloader_kwargs={"num_workers": 0},
                       train_transforms=values, val_transforms=values)


@pytest.fixture
def conv_model():
    """A one-layer model without batch norm: with lr=0 every epoch validates to the same metrics."""

    def make() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Conv2d(1, len(CLASSES), 3, padding=1)

    return make


@pytest.fixture
def unet_model():
    from cellmap_train.models import UNet

    def make() -> torch.nn.Module:
        torch.manual_seed(0)
        return UNet(spatial_dims=2, in_channels=1, out_channels=len(CLASSES), base_features=4, depth=2)

    return make


@pytest.fixture
def make_settings(tmp_path):
    """TrainSettings for a run in tmp_path: 2 epochs of 2 steps, one validation batch, CPU."""
    from cellmap_train.engine import TrainSettings

    def make(**overrides) -> TrainSettings:
        values = dict(epochs=2, iterations_per_epoch=2, model_name="tiny", run_dir=str(tmp_path), load_model=None,
                      validation_batch_limit=1, progress_bar=False, device="cpu")
        return TrainSettings(**{**values, **overrides})

    return make


def state_equal(left: dict, right: dict) -> bool:
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


@pytest.fixture
def same_state():
    """torch.equal on every tensor of two state dicts."""
    return state_equal
