"""Each transform's effect on a known pattern, and the transform config groups."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hydra.utils import instantiate

from cellmap_train.data.transforms import (BinarizeLabels, NormalizeRaw, SampleTransforms, SpatialTransform,
                                           rotation_margin, rotation_matrix)
from cellmap_train.data.label_transfer import UNKNOWN

RNG = np.random.default_rng(0)


def pattern(shape=(1, 4, 4)):
    raw = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
    labels = np.stack([raw % 2, raw % 3]).astype(np.float32)
    return raw, labels


def test_mirror_flips_only_listed_axes_with_their_probability():
    raw, labels = pattern((2, 3, 4))
    out_raw, out_labels = SpatialTransform(mirror={"x": 1.0, "y": 0.0})(raw, labels, RNG)
    np.testing.assert_array_equal(out_raw, raw[:, :, ::-1])
    np.testing.assert_array_equal(out_labels, labels[:, :, :, ::-1])


def test_transpose_swaps_equal_sized_listed_axes_only():
    raw, labels = pattern((1, 4, 4))
    seen = set()
    for seed in range(20):
        out_raw, out_labels = SpatialTransform(transpose=["x", "y"])(raw, labels, np.random.default_rng(seed))
        np.testing.assert_array_equal(out_labels[0], out_raw % 2)  # labels follow raw
        seen.add(out_raw.tobytes())
    assert seen == {raw.tobytes(), raw.transpose(0, 2, 1).tobytes()}
    flat_raw, _ = pattern((1, 3, 5))  # unequal sizes: never swapped, shape kept
    out_raw, _ = SpatialTransform(transpose=["x", "y", "z"])(flat_raw, flat_raw[None].astype(np.float32), RNG)
    np.testing.assert_array_equal(out_raw, flat_raw)


def test_rotate_90_about_z_turns_the_plane():
    raw, labels = pattern((1, 4, 4))
    out_raw, out_labels = SpatialTransform(rotate={"z": [90, 90]})(raw, labels, RNG)
    assert out_raw.dtype == np.uint8 and out_raw.shape == (1, 4, 4)
    np.testing.assert_array_equal(out_raw[0], np.rot90(raw[0], k=-1))
    np.testing.assert_array_equal(out_labels[:, 0], np.rot90(labels[:, 0], k=-1, axes=(1, 2)))


def test_rotate_45_makes_corners_unknown_and_keeps_label_values():
    raw = np.full((1, 16, 16), 200, dtype=np.uint8)
    labels = np.zeros((1, 1, 16, 16), dtype=np.float32)
    labels[0, 0, :, 8:] = 1
    out_raw, out_labels = SpatialTransform(rotate={"z": [45, 45]})(raw, labels, RNG)
    assert np.isnan(out_labels[0, 0, 0, 0]) and out_raw[0, 0, 0] == 0  # a corner came from outside
    assert not np.isnan(out_labels[0, 0, 8, 8]) and out_raw[0, 8, 8] == 200  # the centre did not
    values = set(np.unique(out_labels[~np.isnan(out_labels)]).tolist())
    assert values == {0.0, 1.0}  # nearest neighbour: no blended label values


def test_rotate_about_x_in_3d_moves_z_into_y():
    raw = np.zeros((5, 5, 5), dtype=np.uint8)
    raw[0, 2, :] = 100  # a line along x at the top z slice, centre y
    out_raw, _ = SpatialTransform(rotate={"x": [90, 90]})(raw, raw[None].astype(np.float32), RNG)
    line = np.argwhere(out_raw[:, :, 2] == 100)
    assert line.tolist() in ([[2, 0]], [[2, 4]])  # now in the centre z slice, at a y edge


def test_value_transforms():
    raw = np.array([0, 51, 255], dtype=np.uint8)
    np.testing.assert_allclose(NormalizeRaw("unit")(raw), [0, 0.2, 1])
    np.testing.assert_allclose(NormalizeRaw("meanstd", mean=51, std=51)(raw), [-1, 0, 4])
    binary = BinarizeLabels(0)(np.array([0, 3, np.nan, -1], dtype=np.float32))
    assert binary.dtype == np.uint8 and binary.tolist() == [0, 1, UNKNOWN, 0]
    kept = BinarizeLabels(0, dtype="float32")(np.array([0, 3, np.nan, -1], dtype=np.float32))
    assert kept.dtype == np.float32 and np.array_equal(kept, [0, 1, np.nan, 0], equal_nan=True)
    with pytest.raises(ValueError, match="dtype must be one of uint8, float32, got 'int8'"):
        BinarizeLabels(dtype="int8")


def test_sample_is_a_pure_function_of_the_generator():
    raw, labels = pattern((1, 8, 8))
    transforms = SampleTransforms(SpatialTransform({"x": 0.5, "y": 0.5}, ["x", "y"], {"z": [-180, 180]}), NormalizeRaw(), BinarizeLabels())
    first = transforms(raw, labels, np.random.default_rng([3, 7]))
    second = transforms(raw, labels, np.random.default_rng([3, 7]))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("group, rotate, transpose", [("default", {"z": [-180, 180]}, ["x", "y"]),
                                                      ("3d", {"z": [-180, 180], "y": [-180, 180], "x": [-180, 180]}, ["x", "y", "z"]),
                                                      ("none", None, None)])
def test_transform_groups_instantiate(compose_cfg, group, rotate, transpose):
    cfg = compose_cfg(f"transforms={group}")
    train, val = instantiate(cfg.transforms.train), instantiate(cfg.transforms.val)
    assert val.spatial is None and isinstance(val.raw, NormalizeRaw) and isinstance(val.target, BinarizeLabels)
    if rotate is None:
        assert train.spatial is None
    else:
        assert {k: list(v) for k, v in train.spatial.rotate.items()} == rotate and train.spatial.transpose == transpose
        assert train.spatial.read_context is False


def test_rotation_about_two_axes_equals_the_two_turns_in_sequence():
    raw = np.arange(27, dtype=np.uint8).reshape(3, 3, 3)
    labels = raw[None].astype(np.float32)
    both = SpatialTransform(rotate={"x": [90, 90], "y": [90, 90]})(raw, labels, RNG)  # the full 3D path
    first = SpatialTransform(rotate={"y": [90, 90]})(raw, labels, RNG)
    second = SpatialTransform(rotate={"x": [90, 90]})(*first, RNG)
    for a, b in zip(both, second):
        np.testing.assert_array_equal(a, b)
    assert sorted(both[0].ravel().tolist()) == list(range(27))  # a permutation: nothing blended or lost


def test_rotation_margin_is_the_context_a_turn_reads():
    assert rotation_margin((1, 16, 16), np.eye(3)).tolist() == [0, 0, 0]
    assert rotation_margin((1, 16, 16), rotation_matrix({"z": 90})).tolist() == [0, 0, 0]  # whole voxels, same size
    assert rotation_margin((1, 16, 32), rotation_matrix({"z": 90})).tolist() == [0, 8, 0]  # y now spans x's 32
    # 45 degrees: the corner voxel centre sits 7.5 * sqrt(2) = 10.6 from the centre, 3.1 past the
    # sample's 7.5; 4 voxels hold it and 1 more its interpolation neighbour. z is never turned.
    assert rotation_margin((1, 16, 16), rotation_matrix({"z": 45})).tolist() == [0, 5, 5]


def centre(array: np.ndarray, shape) -> np.ndarray:
    """The centred box of `shape` in the last len(shape) axes."""
    lead = array.ndim - len(shape)
    return array[(slice(None),) * lead + tuple(slice((n - s) // 2, (n + s) // 2) for n, s in zip(array.shape[lead:], shape))]


@pytest.mark.parametrize("shape, spatial", [((1, 16, 16), SpatialTransform({"x": 0.5, "y": 0.5}, ["x", "y"], {"z": [-180, 180]},
                                                                            read_context=True)),
                                            ((12, 12, 12), SpatialTransform({"z": 0.5, "x": 0.5}, ["x", "y", "z"],
                                                                            {a: [-180, 180] for a in "zyx"}, read_context=True))])
def test_a_sample_read_with_its_margins_is_the_centre_of_the_same_turn_of_a_larger_volume(shape, spatial):
    """With read_context, what the datasets do (draw, read the margins, apply) gives the voxels
    that the same flips, axis swaps and rotation of the whole volume put there: nothing from the
    padding. Without it (the default) the same draw asks for no margin."""
    rng = np.random.default_rng(5)
    big = (1, 60, 60) if shape[0] == 1 else (40, 40, 40)
    raw = rng.uniform(1, 2, size=big).astype(np.float32)  # never 0, the padding value
    labels = (rng.random((2, *big)) < 0.5).astype(np.float32)
    for seed in range(30):
        draw = spatial.draw(np.random.default_rng(seed), shape, shape)
        assert draw.matrix is not None and (draw.raw_margin == draw.label_margin).all() and draw.raw_margin.any()
        assert not dataclasses.replace(draw, read_context=False).raw_margin.any()
        with_margin = [s + 2 * m for s, m in zip(shape, draw.raw_margin)]
        out_raw, out_labels = draw.apply(centre(raw, with_margin), centre(labels, with_margin))
        assert out_raw.shape == shape and out_labels.shape == (2, *shape)
        assert out_raw.min() >= 1 and not np.isnan(out_labels).any()
        whole = dataclasses.replace(draw, raw_shape=big, label_shape=big).apply(raw, labels)
        np.testing.assert_allclose(out_raw, centre(whole[0], shape), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(out_labels, centre(whole[1], shape))


def test_read_context_is_an_override_away(compose_cfg):
    for group in ("default", "3d"):
        cfg = compose_cfg(f"transforms={group}", "transforms.train.spatial.read_context=true")
        assert instantiate(cfg.transforms.train).spatial.read_context is True


def nearest_by_definition(labels: np.ndarray, draw, out_shape) -> tuple[np.ndarray, np.ndarray]:
    """The labels sample voxel by voxel, as SpatialDraw defines it: flip, swap the axes, then take
    the voxel nearest to centre + matrix @ (k - centre); NaN outside. Also where a source sits
    within 1e-6 of a rounding tie, which either neighbour may rightly fill."""
    view = labels
    for i in draw.flips:
        view = np.flip(view, i + 1)
    view = view.transpose([0] + [i + 1 for i in draw.order])
    in_shape = np.array(view.shape[1:])
    out = np.full((labels.shape[0], *out_shape), np.nan, dtype=np.float32)
    ties = np.zeros(out_shape, dtype=bool)
    for k in np.ndindex(*out_shape):
        source = (in_shape - 1) / 2 + draw.matrix @ (np.array(k) - (np.array(out_shape) - 1) / 2)
        ties[k] = (np.abs(source % 1 - 0.5) < 1e-6).any()
        index = np.rint(source).astype(int)
        if (index >= 0).all() and (index < in_shape).all():
            out[(slice(None), *k)] = view[(slice(None), *index)]
    return out, ties


@pytest.mark.parametrize("shape, margin, axes", [((1, 9, 9), 0, "z"), ((1, 9, 9), 3, "z"), ((7, 7, 7), 2, "z"),
                                                 ((7, 7, 7), 0, "zyx"), ((7, 7, 7), 3, "zyx")])
def test_rotated_labels_are_the_nearest_voxel_of_the_flipped_swapped_turned_sample(shape, margin, axes):
    """Both ways labels are turned, a batched 2D sample of the flipped, swapped views (turns in a
    plane) and an index gather from the array as read with the flips and swaps folded into the
    map (3D turns), give the voxel the definition names, for random flips, swaps and turns."""
    spatial = SpatialTransform({a: 0.5 for a in "zyx"}, ["x", "y", "z"], {a: [-180, 180] for a in axes})
    read = [s + 2 * margin * (s > 1 and (a != 0 or axes != "z")) for a, s in enumerate(shape)]  # a turn about z reads no z margin
    labels = np.arange(2 * np.prod(read), dtype=np.float32).reshape(2, *read)  # every voxel tells where it came from
    labels[1, ::2] = np.nan  # unknown voxels travel as they are
    for seed in range(20):
        draw = spatial.draw(np.random.default_rng(seed), shape, shape)
        out_shape = [shape[i] for i in draw.order]
        _, out_labels = draw.apply(np.zeros(read, dtype=np.uint8), labels)
        expected, ties = nearest_by_definition(labels, draw, out_shape)
        assert out_labels.shape == (2, *out_shape) and out_labels.dtype == np.float32
        np.testing.assert_array_equal(out_labels[:, ~ties], expected[:, ~ties])
