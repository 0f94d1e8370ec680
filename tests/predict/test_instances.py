"""The challenge's instance metrics (predict/instances.py) on small synthetic volumes with known
answers, and `evaluate` adding them for instance classes only, from an instance-encoded truth."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cellmap_train.data.demo import multiscales_attrs
from cellmap_train.predict.evaluate import evaluate_store
from cellmap_train.predict.instances import components, hausdorff, match, normalised, score_instances
from cellmap_train.predict.store import PredictionStore

SHAPE = (24, 24, 48)
VOXEL = (4.0, 4.0, 4.0)


def ball(centre, radius, shape=SHAPE) -> np.ndarray:
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def test_touching_balls_are_one_instance_separated_balls_two():
    touching = ball((12, 12, 12), 5) | ball((12, 12, 22), 5)  # their surfaces meet at x = 17
    separated = ball((12, 12, 12), 5) | ball((12, 12, 30), 5)
    assert components(touching)[1] == 1 and components(separated)[1] == 2
    # only corners touching (diagonal neighbours) still connect, as the challenge's 26-connectivity
    corner = np.zeros((3, 3, 3), bool)
    corner[0, 0, 0] = corner[1, 1, 1] = True
    assert components(corner)[1] == 1


def test_merged_prediction_of_two_true_balls_matches_one_and_misses_the_other():
    truth = np.where(ball((12, 12, 12), 5), 1, np.where(ball((12, 12, 22), 5), 2, 0))  # touching at x = 17
    scores = score_instances(truth > 0, truth, VOXEL)
    # the prediction's single component matches one of them; the other is a false negative
    assert (scores["inst_tp"], scores["inst_fp"], scores["inst_fn"]) == (1, 0, 1)
    assert scores["n_hausdorff"] == 2
    cap = min(v * n / 2 for v, n in zip(VOXEL, SHAPE))  # 48 nm
    # matched: the merged blob reaches 10 voxels (40 nm) past its ball; the missed ball: the cap
    assert cap == 48 and scores["hausdorff"] == pytest.approx((40 + cap) / 2)
    # separated in the prediction too: both found, perfect distance
    separated = np.where(ball((12, 12, 12), 5), 1, np.where(ball((12, 12, 30), 5), 2, 0))
    perfect = score_instances(separated > 0, separated, VOXEL)
    assert (perfect["inst_tp"], perfect["inst_fp"], perfect["inst_fn"]) == (2, 0, 0)
    assert perfect["hausdorff"] == 0 and perfect["hausdorff_norm_sum"] == pytest.approx(2.0)


def test_shifted_ball_has_the_shift_as_its_hausdorff_distance():
    voxel = (8.0, 4.0, 2.0)  # anisotropic: the shift is along x, 3 voxels of 2 nm
    truth = ball((12, 12, 20), 6)
    pred = ball((12, 12, 23), 6)
    assert hausdorff(truth, pred, voxel, cap=1e9) == pytest.approx(6.0)
    scores = score_instances(pred, truth.astype(np.uint16) * 9, voxel)  # any id
    assert (scores["inst_tp"], scores["inst_fp"], scores["inst_fn"]) == (1, 0, 0)
    assert scores["hausdorff"] == pytest.approx(6.0)
    assert scores["hausdorff_norm_sum"] == pytest.approx(1.01 ** (-6.0 / math.sqrt(64 + 16 + 4)))
    # 30 voxels (60 nm) apart: capped at half the crop's shortest side (24 * 4 / 2 = 48 nm on y)
    far = score_instances(ball((12, 12, 40), 4), ball((12, 12, 10), 4), voxel)
    assert (far["inst_tp"], far["inst_fp"], far["inst_fn"]) == (0, 1, 1) and far["hausdorff"] == pytest.approx(48.0)
    assert hausdorff(ball((12, 12, 10), 4), ball((12, 12, 40), 4), voxel, cap=1e9) == pytest.approx(60.0)


def test_missed_and_extra_instances_count_at_the_cap():
    truth = ball((12, 12, 10), 4) * 3 + ball((12, 12, 36), 4) * 5
    pred = ball((12, 12, 10), 4) | ball((4, 4, 24), 2)  # first found, second missed, one extra
    scores = score_instances(pred, truth, VOXEL)
    assert (scores["inst_tp"], scores["inst_fp"], scores["inst_fn"]) == (1, 1, 1)
    cap = 24 * 4 / 2
    assert scores["n_hausdorff"] == 3  # two true instances and one unmatched prediction
    assert scores["hausdorff"] == pytest.approx(2 * cap / 3)
    assert scores["hausdorff_norm_sum"] == pytest.approx(1 + 2 * float(normalised(cap, VOXEL)))


def test_matching_prefers_more_matches_then_higher_overlap():
    truth = np.zeros((1, 1, 12), np.int32)
    truth[0, 0, 0:6], truth[0, 0, 6:12] = 1, 2
    pred = np.zeros_like(truth)
    pred[0, 0, 0:5], pred[0, 0, 5:8] = 1, 2  # pred 2 overlaps both; pred 1 only truth 1
    assert match(truth, pred, 2, 2) == {1: 1, 2: 2}


def test_unknown_voxels_are_masked_from_both():
    truth = ball((12, 12, 10), 4) * 1
    pred = ball((12, 12, 10), 4) | ball((12, 12, 36), 4)
    known = np.ones(SHAPE, bool)
    known[:, :, 30:] = False  # the extra prediction lies where nothing is known
    scores = score_instances(pred, truth, VOXEL, known)
    assert (scores["inst_tp"], scores["inst_fp"], scores["inst_fn"]) == (1, 0, 0)


def test_too_many_predicted_instances_are_not_matched():
    truth = ball((12, 12, 24), 4) * 1
    pred = np.zeros(SHAPE, bool)
    pred[::2, ::2, ::2] = True  # thousands of one-voxel instances
    scores = score_instances(pred, truth, VOXEL)
    assert scores["instance_status"] == "skipped_too_many_instances" and scores["n_hausdorff"] == 0


def write_truth(path, values: np.ndarray, instance: bool):
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.attrs.update(multiscales_attrs(path.name, [list(VOXEL)], [[0.0, 0.0, 0.0]]))
    array = group.create_array("s0", shape=values.shape, chunks=(8, 8, 8), dtype=values.dtype)
    array[...] = values
    kind = "instance_segmentation" if instance else "semantic_segmentation"
    array.attrs.update({"cellmap": {"annotation": {"annotation_type": {"type": kind,
                                                                       "encoding": {"absent": 0, "unknown": 255}}}}})
    return str(path)


def test_evaluate_adds_instance_columns_for_instance_classes_only(tmp_path):
    mito = np.where(ball((12, 12, 12), 5), 300, np.where(ball((12, 12, 22), 5), 301, 0)).astype(np.uint16)  # touching
    mito[:, :, 44:] = 255  # unknown: the prediction's extra object there is not counted
    er = ball((12, 12, 30), 5).astype(np.uint8)
    truths = {"mito": write_truth(tmp_path / "mito", mito, True), "er": write_truth(tmp_path / "er", er, False)}
    store = PredictionStore(tmp_path / "pred.zarr", {"checkpoint": "x"})
    arrays = store.begin("crop1", ["mito", "er"], SHAPE, (8, 8, 8), VOXEL, (0.0, 0.0, 0.0), truth=truths)
    arrays["mito"][...] = ((mito > 0) & (mito != 255) | ball((12, 12, 46), 2)).astype(np.uint8)
    arrays["er"][...] = er
    store.commit("crop1", ["mito", "er"], VOXEL, (0.0, 0.0, 0.0))

    per_crop, per_class, overall = evaluate_store(tmp_path / "pred.zarr")
    row = per_crop.set_index("label").loc["mito"]
    # the merged prediction matches one of the two touching true instances
    assert (row["inst_tp"], row["inst_fp"], row["inst_fn"]) == (1, 0, 1)
    assert row["dice"] == pytest.approx(1.0)  # semantically perfect on known voxels
    assert 0 < row["combined"] < 1 and row["f1"] == pytest.approx(2 / 3)
    assert math.isnan(per_crop.set_index("label").loc["er", "inst_tp"])  # er is not an instance class
    assert overall["combined"] == pytest.approx(per_class.set_index("label").loc["mito", "combined"])
    without = evaluate_store(tmp_path / "pred.zarr", instances=False)[0]
    assert "inst_tp" not in without
