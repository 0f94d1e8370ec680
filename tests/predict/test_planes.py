"""`planes=3`: a 2D model over z-, y- and x-slices, the probabilities averaged. The model here
answers with its image's slope along the image's last axis, so each slicing sees another slope
of a linear raw field and the average has a known value."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cellmap_train.data.ngff import ScaleLevel
from cellmap_train.errors import ConfigError
from cellmap_train.predict.planes import PlaneRunner, lay, views
from cellmap_train.predict.predictor import GridPlan, ModelSpec, Predictor, PredictOptions
from cellmap_train.predict.window import TileRunner

SLOPE = {"z": 0.01, "y": 0.02, "x": 0.03}  # raw = 0.01 z + 0.02 y + 0.03 x (voxels)
GAIN = 40.0


class SlopeAlongWidth(torch.nn.Module):
    """Logits = GAIN * d(image)/d(last axis): exact on a linear field, edges included."""

    def forward(self, x):
        return GAIN * torch.gradient(x, dim=-1)[0]


def predict(planes: int, shape=(16, 16, 16), tile=(1, 8, 8)) -> np.ndarray:
    z, y, x = np.indices((40, 40, 40), dtype=np.float32)
    raw = ScaleLevel(SLOPE["z"] * z + SLOPE["y"] * y + SLOPE["x"] * x, (8.0,) * 3, (0.0,) * 3, "memory")
    spec = ModelSpec(["a"], (8.0,) * 3, tile, tile)
    runner = TileRunner(SlopeAlongWidth(), torch.device("cpu"), 2, amp="none")
    predictor = Predictor(spec, runner, PredictOptions(batch_size=5, chunks=(6, 16, 16), planes=planes))
    # the grid starts 12 raw voxels in: every tile reads raw, none the zeros past its edge
    plan = GridPlan(SimpleNamespace(shape=shape), np.full(3, 96.0), np.full(3, 8.0), shape, True)
    slabs = [values for _, _, values in predictor.slabs(raw, plan, [0])]
    assert predictor.tile_count(plan) == (3 if planes == 3 else 1) * 16 * 9
    return np.concatenate(slabs, axis=1)[0]


def sigmoid(v: float) -> float:
    return 1 / (1 + np.exp(-v))


def test_three_planes_average_the_z_y_and_x_slicings():
    one, three = predict(1), predict(3)
    assert one.shape == three.shape == (16, 16, 16)
    # z-slices see [y, x] images: the slope along x
    np.testing.assert_allclose(one, sigmoid(GAIN * SLOPE["x"]), rtol=1e-5)
    # y-slices see [z, x] (slope along x again), x-slices [z, y] (slope along y)
    expected = (2 * sigmoid(GAIN * SLOPE["x"]) + sigmoid(GAIN * SLOPE["y"])) / 3
    np.testing.assert_allclose(three, expected, rtol=1e-5)


def test_plane_runner_moves_the_slice_axis_and_back():
    raw = np.random.default_rng(0).random((2, 5, 1, 7), dtype=np.float32)  # y-slices: [N, z, 1, x]
    seen = []

    def runner(batch):
        seen.append(batch.shape)
        return np.stack([batch, 2 * batch], axis=1)  # [N, 2, 1, z, x]

    out = PlaneRunner(runner, 1)(raw)
    assert seen == [(2, 1, 5, 7)] and out.shape == (2, 2, 5, 1, 7)
    np.testing.assert_array_equal(out[:, 1], 2 * raw)
    assert lay((1, 8, 6), 2) == (8, 6, 1) and lay((1, 8, 6), 1) == (8, 1, 6)


def test_three_planes_need_a_2d_model():
    with pytest.raises(ConfigError, match="planes=3"):
        views(lambda raw: raw, (8, 8, 8), (8, 8, 8), 3)
    with pytest.raises(ConfigError, match="planes=2"):
        views(lambda raw: raw, (1, 8, 8), (1, 8, 8), 2)
