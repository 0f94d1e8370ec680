"""Training and validation sets built by CellMapData on the demo data: shapes, determinism
across DataLoader workers, crop weighting, validation tiles, errors raised inside workers."""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import threading
import time

import numpy as np
import pytest
import torch

from cellmap_train.data import CellMapData
from cellmap_train.data.dataset import crop_probabilities
from cellmap_train.data.ngff import map_concurrently
from cellmap_train.data.transforms import BinarizeLabels, NormalizeRaw, SampleTransforms, SpatialTransform
from cellmap_train.engine.prefetch import DeviceBatches
from cellmap_train.errors import ConfigError, DataError
from cellmap_train.data.label_transfer import UNKNOWN, as_float

CLASSES = ["nuc", "er", "mito"]


def make_data(root, tmp_path, shape=(1, 32, 32), workers=0, **kwargs):
    transforms = SampleTransforms(SpatialTransform({"x": 0.5}, ["x", "y"], {"z": [-180, 180]}), NormalizeRaw(), BinarizeLabels())
    options = dict(search_path=str(root), datasplit_path=tmp_path / "split.csv", classes=CLASSES, batch_size=4,
                   input_array_info={"shape": list(shape), "scale": [8, 8, 8]}, validation_prob=0.3,
                   dataloader_kwargs={"num_workers": workers}, train_transforms=transforms,
                   val_transforms=SampleTransforms(None, NormalizeRaw(), BinarizeLabels()))
    return CellMapData(**{**options, **kwargs})


@pytest.mark.parametrize("shape, raw_shape", [((1, 32, 32), (4, 1, 32, 32)), ([32, 32], (4, 1, 32, 32)),
                                              ((8, 16, 16), (4, 1, 8, 16, 16))])
def test_2d_and_3d_batch_shapes(demo_root, tmp_path, shape, raw_shape):
    data = make_data(demo_root, tmp_path, shape)
    raw, labels = next(iter(data.train_loader()))
    assert tuple(raw.shape) == raw_shape and tuple(labels.shape) == (4, 3, *raw_shape[2:])
    assert data.spatial_dims == (2 if len(raw_shape) == 4 else 3)
    assert raw.dtype == torch.float32 and 0 <= raw.min() and raw.max() <= 1
    assert labels.dtype == torch.uint8 and set(labels.unique().tolist()) <= {0, 1, UNKNOWN}


def test_labels_travel_as_uint8_and_reach_the_device_as_float_with_nan(demo_root, tmp_path):
    spatial = SpatialTransform({"x": 0.5}, ["x", "y"], {"z": [-180, 180]})
    data = make_data(demo_root, tmp_path, (8, 16, 16), workers=1)
    before = make_data(demo_root, tmp_path, (8, 16, 16), workers=1,
                       train_transforms=SampleTransforms(spatial, NormalizeRaw(), BinarizeLabels(dtype="float32")))
    _, sent = next(iter(data.train_loader()))
    _, expected = next(iter(before.train_loader()))
    _, received = next(DeviceBatches(data.train_loader(), torch.device("cpu")))
    assert sent.dtype == torch.uint8 and expected.dtype == received.dtype == torch.float32
    assert (sent == UNKNOWN).any() and (sent == 1).any() and (sent == 0).any()  # turned corners, and both values
    torch.testing.assert_close(received, expected, equal_nan=True, rtol=0, atol=0)
    assert as_float(expected) is expected  # float labels (no target transform, a loader of one's own) pass as they are


def test_unannotated_class_is_nan_for_the_whole_sample(demo_root, tmp_path):
    data = make_data(demo_root, tmp_path)
    k = next(i for i, c in enumerate(data.train_set.crops) if "er" not in c.entry.classes)  # demo crop 8
    raw, labels = data.train_set.crops[k].read(np.mean(data.train_set.bounds[k], axis=0))
    assert np.isnan(labels[1]).all() and not np.isnan(labels[0]).any()


def test_read_context_fills_a_rotated_samples_corners_from_the_data_around_it(demo_root, tmp_path):
    data = make_data(demo_root, tmp_path)
    crop = data.train_set.crops[0]
    middle = np.mean(data.train_set.bounds[0], axis=0)  # the crop is 96 voxels wide: room for a 45-degree 32 x 32
    turn = SampleTransforms(SpatialTransform(rotate={"z": [45, 45]}, read_context=True), None, None)
    raw, labels = crop.sample(middle, turn, np.random.default_rng(0))
    assert raw.shape == (1, 32, 32) and labels.shape == (3, 1, 32, 32)
    assert not np.isnan(labels[[c for c, name in enumerate(CLASSES) if name in crop.entry.classes]]).any()
    assert (raw > 0).all()  # no padding: the demo's raw is never 0 inside its volume
    default = SampleTransforms(SpatialTransform(rotate={"z": [45, 45]}), None, None)
    blank_raw, blank = crop.sample(middle, default, np.random.default_rng(0))  # cut at its size, then turned
    assert np.isnan(blank[:, 0, 0, 0]).all() and blank_raw[0, 0, 0] == 0  # a corner came from outside the read
    np.testing.assert_array_equal(labels[:, :, 12:20, 12:20], blank[:, :, 12:20, 12:20])  # the middle is the same


def test_samples_are_identical_across_workers_and_pickling(demo_root, tmp_path):
    in_process = make_data(demo_root, tmp_path)
    with_workers = make_data(demo_root, tmp_path, workers=2)
    a = next(iter(in_process.train_loader(start_sample=40)))
    b = next(iter(with_workers.train_loader(start_sample=40)))
    copy = pickle.loads(pickle.dumps(in_process.train_set))
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, equal_nan=True)
    torch.testing.assert_close(copy[40][1], a[1][0], equal_nan=True)
    # a pickled crop keeps the levels its parent opened: their readers make their own filesystem
    assert copy.crops[0]._raw.reader is not None and type(copy.crops[0]._raw.array).__name__ == "ArrayGeometry"


def test_validation_tiles_are_fixed_and_cover_every_crop(demo_root, tmp_path):
    first, second = make_data(demo_root, tmp_path), make_data(demo_root, tmp_path)
    tiles = first.val_set.tiles
    assert [(k, c.tolist()) for k, c in tiles] == [(k, c.tolist()) for k, c in second.val_set.tiles]
    crops = len(first.val_set.crops)
    assert crops >= 2 and sorted({k for k, _ in tiles[:crops]}) == list(range(crops))  # round-robin
    assert len(tiles) == crops * 32 * 9  # demo crops: 32 slices of 96x96 voxels -> 3x3 tiles of 32x32 per slice
    torch.testing.assert_close(first.val_set[5][0], second.val_set[5][0])


def test_crop_probability_follows_labelled_volume_and_rare_classes(demo_root, tmp_path):
    data = make_data(demo_root, tmp_path)
    crops = data.train_set.crops
    volumes = np.array([c.labelled_volume() for c in crops])
    np.testing.assert_allclose(crop_probabilities(crops, True, 0.0), volumes / volumes.sum())
    np.testing.assert_allclose(crop_probabilities(crops, False, 0.0), np.full(len(crops), 1 / len(crops)))
    rare = crop_probabilities(crops, True, 1.0)
    mass = np.stack([c.foreground_fractions() for c in crops]) * (volumes / volumes.sum())[:, None]
    # each class gets the same share of draws, spread over crops by how much of it they hold
    np.testing.assert_allclose(rare, (mass / mass.sum(axis=0)).mean(axis=1))
    rarest = int(np.argmin(mass.sum(axis=0)))
    richest = int(np.argmax(mass[:, rarest]))
    assert rare[richest] > volumes[richest] / volumes.sum()
    half = crop_probabilities(crops, True, 0.5)
    np.testing.assert_allclose(half, (rare + volumes / volumes.sum()) / 2)
    with pytest.raises(DataError, match="rare_class_weight"):
        make_data(demo_root, tmp_path, rare_class_weight=2)


def test_positive_weights_are_background_over_foreground_in_the_training_crops(demo_root, tmp_path, caplog):
    """loss.pos_weight=auto (the challenge's weight_loss), checked against the arrays read with zarr."""
    import zarr

    data = make_data(demo_root, tmp_path)
    foreground, background = np.zeros(3), np.zeros(3)
    for crop in data.train_set.crops:
        for c, cls in enumerate(CLASSES):
            if cls in crop.entry.classes:  # the demo writes s0 and s1: s1 is the coarsest (16 nm, or
                labels = np.asarray(zarr.open_array(f"{crop.entry.label_url(cls)}/s1", mode="r")[...])
                voxel = np.prod(crop.known[0].scale) * 8  # [10.48, 8, 8] in the anisotropic dataset)
                foreground[c] += (labels == 1).sum() * voxel
                background[c] += (labels == 0).sum() * voxel
    with caplog.at_level(logging.INFO, logger="cellmap_train.data.datamodule"):
        weights = data.positive_weights()
    np.testing.assert_allclose(weights, background / foreground)
    assert all(weight > 1 for weight in weights)  # every demo class is the smaller part of its crops
    assert f"loss.pos_weight=auto (background / foreground in the training crops): nuc {weights[0]:.3g}" in caplog.text


def test_corrupt_chunk_in_a_worker_is_one_line_naming_the_file(demo_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(demo_root, root)
    raw_s0 = root / "jrc_demo-1/jrc_demo-1.zarr/recon-1/em/fibsem-uint8/s0"
    for chunk in raw_s0.glob("*.*.*"):
        chunk.write_bytes(b"garbage" * 10)
    data = make_data(root, tmp_path, workers=1)
    with pytest.raises(DataError) as info:
        for _ in zip(range(5), data.train_loader()):
            pass
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(raw_s0) + "/") and "corrupt or unreadable chunk" in message


@pytest.mark.parametrize("shape", [(1, 32, 32), (8, 16, 16)])
def test_chunk_cache_changes_no_sample(demo_root, tmp_path, shape):
    """Samples with the cache, with it off, and read through zarr itself are the same arrays."""
    cached = make_data(demo_root, tmp_path, shape, chunk_cache_mb=64)
    plain = make_data(demo_root, tmp_path, shape, chunk_cache_mb=0)
    through_zarr = make_data(demo_root, tmp_path, shape)
    for crop in through_zarr.train_set.crops:
        for level in [crop.open()._raw, *crop.known]:
            level.reader = None
    for i in [*range(12), *range(12)]:  # the second pass is served by the cache
        a, b, c = cached.train_set[i], plain.train_set[i], through_zarr.train_set[i]
        for x, y, z in zip(a, b, c):
            torch.testing.assert_close(x, y, equal_nan=True, rtol=0, atol=0)
            torch.testing.assert_close(x, z, equal_nan=True, rtol=0, atol=0)
    cache = cached.train_set.crops[0].cache
    assert cache.hits > cache.misses > 0 and cache is cached.val_set.crops[0].cache


def test_a_class_no_training_crop_annotates_is_a_warning_naming_what_the_crops_hold(demo_root, tmp_path, caplog):
    # a misspelt name; the challenge's full class list on a few datasets is the same case, and its tool trains it
    with caplog.at_level("WARNING"):
        data = make_data(demo_root, tmp_path, classes=["nuc", "mitochondria"])
    assert data.classes == ["nuc", "mitochondria"]
    assert [r.getMessage() for r in caplog.records] == [
        f"class mitochondria: annotated in no training crop of {tmp_path / 'split.csv'}, so nothing is learnt for it; "
        f"label groups in its crops: er, mito, nuc (mitochondria: did you mean mito?)"]
    caplog.clear()
    (tmp_path / "many").mkdir()  # a new datasplit
    with caplog.at_level("WARNING"):
        make_data(demo_root, tmp_path / "many", classes=["nuc", *(f"c{i}" for i in range(10))])
    assert "classes c0, c1, c2, c3, c4, c5, c6, c7 and 2 more: annotated in no training crop" in caplog.text
    assert "did you mean" not in caplog.text  # nothing on disk is near c0 ... c9
    caplog.clear()
    (tmp_path / "typo").mkdir()
    with caplog.at_level("WARNING"):
        make_data(demo_root, tmp_path / "typo", classes=["nuc", "err", "Nuc", "mitos"])
    assert caplog.text.rstrip().endswith("label groups in its crops: er, mito, nuc "
                                         "(err: did you mean er?; Nuc: did you mean nuc?; mitos: did you mean mito?)")


def test_a_datasplit_written_for_other_classes_is_named_as_the_cause(demo_root, tmp_path, caplog):
    make_data(demo_root, tmp_path, classes=["nuc"])  # writes split.csv listing nuc only
    with caplog.at_level("WARNING"):
        make_data(demo_root, tmp_path, classes=["nuc", "mito"])
    assert "class mito: annotated in no training crop of" in caplog.text
    assert "; its crops do hold mito: split.csv was written for other classes, remove it to list the crops again" in caplog.text
    (tmp_path / "split.csv").unlink()
    caplog.clear()
    with caplog.at_level("WARNING"):
        make_data(demo_root, tmp_path, classes=["nuc", "mito"])
    assert not caplog.records


def test_a_class_only_training_crops_annotate_trains_with_a_warning(demo_root, tmp_path, caplog):
    make_data(demo_root, tmp_path)
    split = tmp_path / "split.csv"
    # the validation crops no longer list mito (one listing only mito is left out): it cannot be scored, but it still trains
    rows = [row.replace(",mito]", "]").replace("[mito,", "[") if row.startswith('"validate"') else row
            for row in split.read_text().splitlines() if not row.endswith('/[mito]"')]
    split.write_text("\n".join(rows) + "\n")
    with caplog.at_level("WARNING"):
        data = make_data(demo_root, tmp_path)
    assert any("mito" in c.entry.classes for c in data.train_set.crops)
    assert not any("mito" in c.entry.classes for c in data.val_set.crops)
    assert [r.getMessage() for r in caplog.records] == [
        f"class mito: annotated in no validation crop of {split}; Dice n/a every epoch"]


def test_no_validation_crop_is_one_error_naming_validation_prob(demo_root, tmp_path, caplog):
    with caplog.at_level("WARNING"), pytest.raises(DataError) as caught:
        make_data(demo_root, tmp_path, validation_prob=0)
    assert str(caught.value) == (f"{tmp_path / 'split.csv'}: no validation crops with any of ['nuc', 'er', 'mito']; "
                                 f"validation_prob=0 leaves none (validation judges the best epoch)")
    assert not caplog.records  # not also a warning per class


def keep_only_coarse_level(group) -> None:
    """Make a multiscale group hold 16 nm only, as a crop annotated at a coarser resolution does."""
    attrs = json.loads((group / ".zattrs").read_text())
    datasets = attrs["multiscales"][0]["datasets"]
    attrs["multiscales"][0]["datasets"] = [d for d in datasets if d["path"] != "s0"]
    (group / ".zattrs").write_text(json.dumps(attrs))


def test_crops_without_the_voxel_size_asked_for_are_upsampled_not_left_out(demo_root, tmp_path, caplog):
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    reference = make_data(root, tmp_path)  # the split: crops 1-4 and 6-8, 10 train, 5 and 9 validate
    keep_only_coarse_level(root / "jrc_demo-2/jrc_demo-2.zarr/recon-1/em/fibsem-uint8")  # upsampled from [10.48, 8, 8]
    keep_only_coarse_level(root / "jrc_demo-1/jrc_demo-1.zarr/recon-1/labels/groundtruth/crop1/mito")  # the same
    with caplog.at_level("WARNING"):
        data = make_data(root, tmp_path)
    assert [c.entry.name for c in data.train_set.crops] == [c.entry.name for c in reference.train_set.crops]
    assert [c.entry.name for c in data.val_set.crops] == [c.entry.name for c in reference.val_set.crops]
    crop1 = next(c for c in data.train_set.crops if c.entry.name == "jrc_demo-1/crop1")
    assert crop1.entry.classes == ("nuc", "er", "mito")
    centre = np.mean(crop1.bounds(), axis=0)
    labels = crop1.read(centre)[1]
    exact = next(c for c in reference.train_set.crops if c.entry.name == "jrc_demo-1/crop1").read(centre)[1]
    np.testing.assert_array_equal(labels[:2], exact[:2])  # nuc, er: still read as they are
    assert not np.isnan(labels[2]).any()  # mito: known everywhere, upsampled from 16 nm (the demo's s1 is a
    assert np.mean(labels[2] == exact[2]) > 0.9  # 2x majority vote: it differs from s0 only at boundaries)
    raw_path = root / "jrc_demo-2/jrc_demo-2.zarr/recon-1/em/fibsem-uint8/s1"
    assert [r.getMessage() for r in caplog.records] == [
        f"{raw_path}: no level as fine as the requested 8x8x8 nm; samples are upsampled from it (x1.31x1x1)"]


def test_crops_opened_at_once_or_one_by_one_make_the_same_sets(demo_root, tmp_path):
    one_by_one = make_data(demo_root, tmp_path, open_threads=1, rare_class_weight=0.5)
    at_once = make_data(demo_root, tmp_path, open_threads=16, rare_class_weight=0.5)
    for a, b in ((one_by_one.train_set, at_once.train_set), (one_by_one.val_set, at_once.val_set)):
        assert [crop.entry for crop in a.crops] == [crop.entry for crop in b.crops]
    np.testing.assert_array_equal(one_by_one.train_set.probabilities, at_once.train_set.probabilities)
    for x, y in zip(one_by_one.train_set[7], at_once.train_set[7]):
        torch.testing.assert_close(x, y, equal_nan=True)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "8"])
def test_open_threads_must_be_a_positive_integer(demo_root, tmp_path, bad):
    with pytest.raises(ConfigError, match=rf"data.open_threads={bad!r}: must be an integer >= 1"):
        make_data(demo_root, tmp_path, open_threads=bad)


def test_map_concurrently_runs_at_once_keeps_the_order_and_raises_the_first_error():
    together = threading.Barrier(4, timeout=10)

    def meet(i: int) -> int:
        together.wait()  # passes only when four calls run at the same time
        return i

    assert map_concurrently(meet, list(range(4)), threads=4) == [0, 1, 2, 3]

    started = []

    def crop(i: int) -> int:
        started.append(i)
        if i in (0, 3):
            raise DataError(f"crop {i} is broken")
        time.sleep(0.2)
        return i

    with pytest.raises(DataError, match="crop 0 is broken"):
        map_concurrently(crop, list(range(8)), threads=2)
    assert len(started) < 8  # the calls not yet started when crop 0 failed were dropped
