"""The resampled read's fast paths against the general ones they stand in for, on random maps
(steps, flips, axis orders, turns about one axis or all three) and boxes reaching past the level:
labels gathered as stored and then decoded equal sampling the decoded, NaN-padded box (unknown
codes and the outside stay unknown); plane-by-plane gathers equal one flat gather; linear passes
read from the stored dtype equal the float32 ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cellmap_train.data import resample
from cellmap_train.data.dataset import resampled_labels
from cellmap_train.data.label_encoding import LabelEncoding
from cellmap_train.data.ngff import open_level
from cellmap_train.data.resample import (Placement, labels_onto_grid, onto_grid, sample_linear, sample_nearest,
                                         sampling_grid)
from cellmap_train.data.transforms import rotation_matrix

SEMANTIC = LabelEncoding(unknown=255.0)
INSTANCE = LabelEncoding(unknown=255.0, instance=True)
ATTRS = {"cellmap": {"annotation": {"annotation_type": {"type": "semantic_segmentation",
                                                        "encoding": {"absent": 0, "present": 1, "unknown": 255}}}}}


class Map:
    """A stand-in for a SpatialDraw: only its read map is used on a resampled read."""

    def __init__(self, matrix: np.ndarray):
        self.matrix = matrix

    def read_map(self) -> np.ndarray:
        return self.matrix


def random_map(rng: np.random.Generator, kind: str) -> np.ndarray:
    """Flips and an axis order (a signed permutation), then no turn, a turn about one axis, or a 3D turn."""
    frame = np.zeros((3, 3))
    frame[rng.permutation(3), np.arange(3)] = rng.choice([-1.0, 1.0], 3)
    if kind == "none":
        return frame
    if kind == "plane":
        return frame @ rotation_matrix({str(rng.choice(list("zyx"))): rng.uniform(-180, 180)})
    return frame @ rotation_matrix({axis: rng.uniform(-180, 180) for axis in "zyx"})


def random_case(rng: np.random.Generator, kind: str):
    """(box shape, out shape, steps, read map, centre in box voxels): the sample may reach past the box."""
    box = tuple(int(n) for n in rng.integers(4, 16, 3))
    out = (1, *(int(n) for n in rng.integers(3, 10, 2))) if rng.random() < 0.3 else tuple(int(n) for n in rng.integers(2, 9, 3))
    step = rng.uniform(0.5, 2.2, 3)
    centre = rng.uniform(-2, np.asarray(box) + 1)
    return box, out, step, random_map(rng, kind), centre


def padded(stored: np.ndarray, low, box, decoders) -> np.ndarray:
    """What the general path reads: each class decoded, NaN outside the stored part."""
    out = np.full((len(stored), *box), np.nan, np.float32)
    part = tuple(slice(a, a + n) for a, n in zip(low, stored.shape[1:]))
    for slot, values, decode in zip(out, stored, decoders):
        slot[part] = decode(values)
    return out


@pytest.mark.parametrize("kind", ["none", "plane", "3d"])
def test_gathering_as_stored_then_decoding_equals_sampling_the_decoded_padded_box(kind, monkeypatch):
    rng = np.random.default_rng({"none": 1, "plane": 2, "3d": 3}[kind])
    planes = 0
    for _ in range(40):
        box, out, step, read_map, centre = random_case(rng, kind)
        low = rng.integers(0, 3, 3)
        part = np.maximum(np.asarray(box) - low - rng.integers(0, 3, 3), 1)
        stored = rng.choice(np.array([0, 1, 2, 7, 255], np.uint16), size=(2, *part))  # 255 unknown, 2 and 7 ids
        decoders = [SEMANTIC.decode, INSTANCE.decode]
        where = Placement((0, 0, 0), box, centre, step, False)
        matrix = np.diag(step) @ read_map
        expected = sample_nearest(padded(stored, low, box, decoders), matrix, centre, out)
        got = labels_onto_grid(stored, low, where, Map(read_map), out, decoders)
        np.testing.assert_array_equal(got, expected)
        planes += resample.plane_pair(matrix) is not None
        with monkeypatch.context() as patch:  # the one flat gather, for every map
            patch.setattr(resample, "plane_pair", lambda matrix: None)
            np.testing.assert_array_equal(labels_onto_grid(stored, low, where, Map(read_map), out, decoders), expected)
    assert planes == (0 if kind == "3d" else 40)  # the plane-by-plane path was the one taken


def test_a_box_that_misses_the_level_is_all_unknown():
    where = Placement((0, 0, 0), (4, 4, 4), np.full(3, 1.5), np.ones(3) * 1.3, False)
    got = labels_onto_grid(None, None, where, None, (2, 3, 3), [SEMANTIC.decode] * 3)
    assert got.shape == (3, 2, 3, 3) and np.isnan(got).all()


def test_resampled_labels_read_from_a_level_equal_the_padded_read(tmp_path):
    """Through the level's own reads: boxes reaching past every side of the level, or missing it."""
    from tests.data.conftest import write_ngff

    rng = np.random.default_rng(4)
    shape, scale, translation = (9, 12, 10), (5.24, 4.0, 4.0), (3.0, 2.0, 1.0)
    levels = []
    for name, dtype in (("mito", np.uint8), ("cell", np.uint16)):
        data = rng.choice(np.array([0, 1, 255, 300 if dtype == np.uint16 else 1], dtype), size=shape)
        write_ngff(tmp_path / name, [(data, scale, translation)], chunks=(4, 5, 3), s0_attrs=ATTRS)
        levels.append(open_level(str(tmp_path / name), scale))
    for _ in range(40):
        box, out, step, read_map, centre = random_case(rng, str(rng.choice(["none", "plane", "3d"])))
        start = tuple(int(v) for v in rng.integers(-8, 12, 3))
        where = Placement(start, box, centre, step, False)
        low = levels[0].box_low(start)
        read = np.stack([level.read_labels(low, box) for level in levels])
        expected = onto_grid(read, where, Map(read_map), out, True)
        np.testing.assert_array_equal(resampled_labels(levels, where, {}, Map(read_map), out), expected)


def test_the_plane_pass_equals_the_general_linear_pass_bit_for_bit():
    """Interpolating contiguous planes one at a time (from any dtype) gives the general pass's
    float32 numbers, with coordinates beyond both ends and reversed (a flip)."""
    rng = np.random.default_rng(5)
    for _ in range(20):
        values = rng.integers(0, 256, (2, 9, 6, 5)).astype(np.uint8)
        coords = np.sort(rng.uniform(-1.8, 9.8, int(rng.integers(1, 12))))[::rng.choice([-1, 1])]
        as_float = values.astype(np.float32)
        general = np.moveaxis(resample._linear_1d(np.moveaxis(as_float, 1, 2), 2, coords), 2, 1)
        np.testing.assert_array_equal(resample._linear_1d(as_float, 1, coords), general)
        np.testing.assert_array_equal(resample._linear_1d(values, 1, coords), general)


@pytest.mark.parametrize("kind", ["none", "plane", "3d"])
def test_linear_resampling_from_stored_values_is_trilinear(kind):
    """sample_linear of uint8 values (passes read as stored, axis first) equals it on their float32
    copy and the one trilinear grid_sample over the whole map, to float32 rounding; zeros from outside."""
    rng = np.random.default_rng({"none": 6, "plane": 7, "3d": 8}[kind])
    for _ in range(25):
        box, out, step, read_map, centre = random_case(rng, kind)
        values = rng.integers(0, 256, (1, *box)).astype(np.uint8)
        matrix = np.diag(step) @ read_map
        got = sample_linear(values, matrix, centre, out)
        assert got.dtype == np.float32 and got.shape == (1, *out)
        np.testing.assert_allclose(got, sample_linear(values.astype(np.float32), matrix, centre, out), rtol=0, atol=2e-3)
        shift = (2 * centre + 1) / np.asarray(box) - 1
        trilinear = F.grid_sample(torch.from_numpy(values.astype(np.float32))[None],
                                  sampling_grid(out, box, matrix, shift, None), mode="bilinear",
                                  padding_mode="zeros", align_corners=False)[0].numpy()
        np.testing.assert_allclose(got, trilinear, rtol=0, atol=2e-3)


def test_stored_integers_take_the_unmixed_axis_first():
    """Turning first would copy the whole box into float32 for grid_sample: with uint8 raw the
    axis pass goes first (it reads the planes as stored), with float32 the cost model stands."""
    assert resample._turn_first((195, 256, 256), (128, 128, 128), [1, 2], 0)
    assert not resample._turn_first((195, 256, 256), (128, 128, 128), [1, 2], 0, True)
    assert not resample._turn_first((2, 256, 256), (1, 128, 128), [1, 2], 0, True)


def test_the_span_read_for_labels_holds_every_voxel_the_gather_takes():
    """`nearest_span` bounds the box voxels nearest sampling takes, ties included (half-voxel centres, whole steps)."""
    rng = np.random.default_rng(9)
    for n in range(60):
        box, out, step, read_map, centre = random_case(rng, ["none", "plane", "3d"][n % 3])
        if n % 2:
            centre, step = np.round(centre) + 0.5, rng.integers(1, 3, 3).astype(float)
        where = Placement((0, 0, 0), box, centre, step, False)
        first, stop = resample.nearest_span(where, Map(read_map), out)
        index, _ = resample.nearest_indices(np.diag(step) @ read_map, centre, out, (10**6,) * 3, low=(-10**5,) * 3)
        for axis, (ix, a, b) in enumerate(zip(index, first, stop)):
            taken = np.unique(ix - 10**5)
            taken = taken[(taken >= 0) & (taken < box[axis])]
            assert np.all((taken >= a) & (taken < b)), (axis, taken, a, b)
