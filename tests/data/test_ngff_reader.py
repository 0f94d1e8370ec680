"""The OME-NGFF reader on zarr arrays written by the test: level choice, world -> voxel
alignment of raw and labels at different scales and origins, label encodings, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from cellmap_train.data.dataset import ArrayInfo, Crop
from cellmap_train.data.datasplit import CropEntry
from cellmap_train.data.ngff import choose_level, open_level
from cellmap_train.errors import DataError

RAW_S0_T = (-30.0, 2.0, 18.0)  # 4 nm voxels: edges start at (-32, 0, 16)
RAW_S1_T = (-28.0, 4.0, 20.0)  # 8 nm voxels, half a fine voxel further in: edges also at (-32, 0, 16)
LABEL_T = (44.0, 44.0, 44.0)   # 8 nm voxels: edges start at 40


@pytest.fixture
def volume(tmp_path, ngff_writer):
    """A raw volume whose voxel values are their own flat indices, and one 8 nm label crop."""
    zarr_root = tmp_path / "ds" / "ds.zarr"
    raw_s0 = np.arange(32**3, dtype=np.uint32).reshape(32, 32, 32)
    raw_s1 = (np.arange(16**3, dtype=np.uint32) + 10**6).reshape(16, 16, 16)
    ngff_writer(zarr_root / "recon-1/em/fibsem-uint8", [(raw_s0, [4] * 3, RAW_S0_T), (raw_s1, [8] * 3, RAW_S1_T)])
    labels = np.arange(4**3, dtype=np.uint8).reshape(4, 4, 4) % 2
    ngff_writer(zarr_root / "recon-1/labels/groundtruth/crop1/nuc", [(labels, [8] * 3, LABEL_T)])
    entry = CropEntry("train", str(zarr_root), "recon-1/em/fibsem-uint8", str(zarr_root), "recon-1/labels/groundtruth/crop1", ("nuc",))
    return entry, raw_s0, raw_s1, labels


def make_crop(entry, raw_scale, raw_shape, classes=("nuc",), label_shape=(2, 2, 2)):
    return Crop(entry, list(classes), ArrayInfo(tuple(raw_shape), (raw_scale,) * 3), ArrayInfo(tuple(label_shape), (8.0,) * 3), None)


def test_level_is_chosen_by_scale(volume):
    entry, raw_s0, raw_s1, _ = volume
    assert open_level(entry.raw_url, [4, 4, 4]).path.endswith("/s0")
    assert open_level(entry.raw_url, [8, 8, 8]).path.endswith("/s1")


def test_raw_and_labels_align_by_world_coordinates_at_fine_raw_scale(volume):
    entry, raw_s0, _, labels = volume
    crop = make_crop(entry, 4.0, (4, 4, 4))
    raw, target = crop.read(np.array([56.0, 56.0, 56.0]))
    # labels: world box [48, 64) -> label voxels 1..2; raw: same box at 4 nm from edges (-32, 0, 16)
    np.testing.assert_array_equal(target[0], labels[1:3, 1:3, 1:3])
    np.testing.assert_array_equal(raw, raw_s0[20:24, 12:16, 8:12])
    assert raw[0, 0, 0] == 20 * 32 * 32 + 12 * 32 + 8


def test_raw_and_labels_align_at_coarse_raw_scale_with_context(volume):
    entry, _, raw_s1, labels = volume
    crop = make_crop(entry, 8.0, (4, 4, 4))  # raw twice the label extent: world [40, 72)
    raw, target = crop.read(np.array([57.0, 55.0, 58.0]))  # snaps to the label grid
    np.testing.assert_array_equal(target[0], labels[1:3, 1:3, 1:3])
    np.testing.assert_array_equal(raw, raw_s1[9:13, 5:9, 3:7])


def test_sample_larger_than_crop_is_padded_with_unknown(volume):
    entry, _, _, labels = volume
    crop = make_crop(entry, 8.0, (6, 6, 6), label_shape=(6, 6, 6))
    _, target = crop.read(np.array([56.0, 56.0, 56.0]))  # world [32, 80): one unknown voxel each side
    assert np.isnan(target[0, 0]).all() and np.isnan(target[0, :, :, -1]).all()
    np.testing.assert_array_equal(target[0, 1:5, 1:5, 1:5], labels)


def test_unannotated_class_is_unknown(volume):
    entry, _, _, labels = volume
    crop = make_crop(entry, 8.0, (2, 2, 2), classes=("nuc", "er"))
    _, target = crop.read(np.array([56.0, 56.0, 56.0]))
    assert not np.isnan(target[0]).any() and np.isnan(target[1]).all()


def test_level_choice_is_the_coarsest_nowhere_coarser_else_the_finest(volume):
    entry = volume[0]
    assert open_level(entry.raw_url, [16, 16, 16]).path.endswith("/s1")  # downsampled from 8 nm
    assert open_level(entry.raw_url, [6, 6, 6]).path.endswith("/s0")  # 8 nm would be coarser
    assert open_level(entry.raw_url, [8, 4, 8]).path.endswith("/s0")  # coarser on one axis is coarser
    assert open_level(entry.raw_url, [2, 2, 2]).path.endswith("/s0")  # finer than all: the finest


def test_choose_level_on_anisotropic_pyramids():
    pyramid = [[2.62 * 2**k, 2.0 * 2**k, 2.0 * 2**k] for k in range(6)]
    assert choose_level(pyramid, [8, 8, 8]) == 1  # [5.24, 4, 4]: [10.48, 8, 8] is coarser in z
    assert choose_level(pyramid, [16, 16, 16]) == 2
    assert choose_level(pyramid, [2.62, 2, 2]) == 0 and choose_level(pyramid, [2, 2, 2]) == 0
    assert choose_level([[32.0] * 3], [8, 8, 8]) == 0  # a class annotated only at 32 nm


def test_missing_path_names_it(tmp_path):
    missing = tmp_path / "nothing.zarr" / "recon-1"
    with pytest.raises(DataError, match=f"{missing}: no zarr group there"):
        open_level(str(missing), [8, 8, 8])


def test_corrupt_chunk_error_names_the_chunk_file(volume):
    entry, *_ = volume
    chunk = f"{entry.raw_url}/s0/5.3.2"
    with open(chunk, "wb") as handle:
        handle.write(b"this is not a blosc frame" * 4)
    crop = make_crop(entry, 4.0, (4, 4, 4))
    with pytest.raises(DataError) as info:
        crop.read(np.array([56.0, 56.0, 56.0]))  # needs raw voxels z 20..23, y 12..15, x 8..11
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{chunk}: corrupt or unreadable chunk")


def test_semantic_unknown_code_and_instance_ids(tmp_path, ngff_writer):
    def annotation(kind):
        return {"cellmap": {"annotation": {"annotation_type": {"encoding": {"absent": 0, "unknown": 255}, "type": kind}}}}

    values = np.array([0, 1, 255, 7], dtype=np.uint8).reshape(1, 1, 4)
    semantic = ngff_writer(tmp_path / "sem", [(values, [8] * 3, [4.0] * 3)], s0_attrs=annotation("semantic_segmentation"))
    instance = ngff_writer(tmp_path / "inst", [(values, [8] * 3, [4.0] * 3)], s0_attrs=annotation("instance_segmentation"))
    plain = ngff_writer(tmp_path / "plain", [(values, [8] * 3, [4.0] * 3)])
    read = {p.name: open_level(str(p), [8] * 3).read_labels([0, 0, 0], (1, 1, 4))[0, 0] for p in (semantic, instance, plain)}
    np.testing.assert_array_equal(read["sem"], [0, 1, np.nan, 7])
    # the unknown code an instance array's encoding names is unknown, not an id: cellmap-schemas
    # reserves the codes its encoding names (data/label_encoding.py; test_real_formats.py has the rest)
    np.testing.assert_array_equal(read["inst"], [0, 1, np.nan, 1])
    np.testing.assert_array_equal(read["plain"], [0, 1, 255, 7])
