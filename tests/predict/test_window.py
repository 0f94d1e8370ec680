"""Sliding window and blending: overlapping tiles of an identity model give back the input
exactly, streamed slab by slab; tile layout and weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cellmap_train.predict.window import (SlabBlender, TileGrid, TileRunner, gaussian_weight, mirror_axes, run_tiles,
                                          tile_starts)


def blend_streamed(volume: np.ndarray, tile, overlap: float, slab: int, runner) -> np.ndarray:
    """Run the blender over `volume` [Z,Y,X] slab by slab as the predictor does; return the result."""
    grid = TileGrid(volume.shape, tile, overlap)
    blender = SlabBlender(1, grid, gaussian_weight(tile))
    padded = np.pad(volume, [(t, t) for t in tile])  # tiles may reach past the volume

    def cut(start):
        return padded[tuple(slice(s + t, s + 2 * t) for s, t in zip(start, tile))]

    out = []
    for a in range(0, volume.shape[0], slab):
        b = min(a + slab, volume.shape[0])
        run_tiles(blender, blender.pending(b), cut, runner, batch_size=3)
        out.append(blender.final(a, b)[0])
        blender.drop_below(b)
    assert blender.next_tile == len(blender)  # every tile ran exactly once
    return np.concatenate(out)


@pytest.mark.parametrize("shape,tile,overlap,slab", [((37, 50, 45), (8, 16, 16), 0.5, 5), ((12, 40, 33), (1, 16, 16), 0.5, 4),
                                                     ((6, 10, 9), (8, 16, 16), 0.25, 64), ((20, 30, 30), (7, 9, 11), 0.6, 3)])
def test_identity_model_is_reproduced_exactly(shape, tile, overlap, slab):
    volume = np.random.default_rng(0).random(shape, dtype=np.float32)
    out = blend_streamed(volume, tile, overlap, slab, lambda raw: raw[:, None])
    assert out.shape == volume.shape
    # a weighted mean of equal values (summed in float64): the input itself, bit for bit
    np.testing.assert_array_equal(out, volume)


def test_blending_weights_tiles_by_their_centre():
    """Two tiles disagreeing: in the overlap, each voxel leans to the tile whose centre is nearer."""
    volume = np.zeros((1, 1, 24), np.float32)
    starts = TileGrid((1, 1, 24), (1, 1, 16), 0.5).starts()
    assert [s[2] for s in starts] == [0, 8]
    values = {0: 0.0, 8: 1.0}
    grid = TileGrid(volume.shape, (1, 1, 16), 0.5)
    blender = SlabBlender(1, grid, gaussian_weight((1, 1, 16)))
    for start in blender.pending(1):
        blender.add(start, np.full((1, 1, 1, 16), values[start[2]], np.float32))
    line = blender.final(0, 1)[0, 0, 0]
    assert np.all(line[:8] == 0) and np.all(line[16:] == 1)
    assert np.all(np.diff(line[8:16]) > 0) and line[11] < 0.5 < line[12]


def test_tile_starts_cover_the_range_with_the_overlap():
    for size, tile, overlap in [(100, 16, 0.5), (17, 16, 0.5), (16, 16, 0.5), (300, 96, 0.5), (50, 7, 0.0)]:
        starts = tile_starts(size, tile, overlap)
        assert starts[0] == 0 and starts[-1] + tile == size
        assert all(b - a <= tile * (1 - overlap) + 1 for a, b in zip(starts, starts[1:]))
    assert tile_starts(10, 16, 0.5) == [-3]  # one tile, centred on a range shorter than it


def test_gaussian_weight_peaks_at_the_centre():
    weight = gaussian_weight((1, 9, 8))
    assert weight.shape == (1, 9, 8) and weight.max() == pytest.approx(1.0, abs=0.02) and weight.min() > 0
    assert weight[0, 4, 3] == weight.max() and weight[0, 0, 0] == weight.min()


def test_mirroring_averages_every_flip_and_undoes_it():
    assert len(mirror_axes(2, True)) == 4 and len(mirror_axes(3, True)) == 8 and mirror_axes(3, False) == [()]

    class Shift(torch.nn.Module):  # not flip-invariant: a flip not undone would move the output
        def forward(self, x):
            return torch.logit(x.clamp(1e-3, 1 - 1e-3)) + torch.linspace(-1, 1, x.shape[-1])

    raw = np.random.default_rng(1).uniform(0.2, 0.8, (2, 1, 12, 10)).astype(np.float32)
    plain = TileRunner(Shift(), torch.device("cpu"), 2, mirror=False)(raw)
    mirrored = TileRunner(Shift(), torch.device("cpu"), 2, mirror=True)(raw)
    assert plain.shape == mirrored.shape == (2, 1, 1, 12, 10)
    assert not np.allclose(plain, mirrored)  # the x flip moves the shift: averaging changes the result
    symmetric = TileRunner(torch.nn.Identity(), torch.device("cpu"), 2, mirror=True)(raw)
    np.testing.assert_allclose(symmetric, TileRunner(torch.nn.Identity(), torch.device("cpu"), 2)(raw), rtol=1e-6)
