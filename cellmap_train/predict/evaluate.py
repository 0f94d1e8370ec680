"""Score a prediction store against ground truth: per crop and class the IoU and Dice over the
voxels the annotation knows (unknown voxels and classes a crop does not annotate are left out, as
in training's validation), then per class over all crops (from the summed counts, as training's
`dice/<class>`) and overall (the mean of the per-class scores, as `dice/mean`).

Ground truth is found from each array's `truth` attribute (written by `predict` for the crops of
a datasplit) and read, slab by slab, on the prediction's grid: nearest neighbour where the
annotation's own grid differs. For the challenge's instance classes (instances.INSTANCE_CLASSES)
the challenge's instance metrics too (instances.py): the crop's true instance ids (its array's
own values where `cellmap.annotation` says instance_segmentation, else the components of its
semantic labels) and the prediction are read whole (one crop and label at a time), unknown
voxels zeroed in both; per class the counts are summed over crops and F1, the normalised
Hausdorff distance and their combined score computed from the sums, as the challenge does.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import zarr

from cellmap_train.data.ngff import open_level
from cellmap_train.data.resample import onto_grid, place
from cellmap_train.errors import DataError, UserError
from cellmap_train.predict.instances import INSTANCE_CLASSES, INSTANCE_COUNTS, instance_scores, relabel, score_instances

COUNTS = ("tp", "fp", "fn", "known")


def truth_on_grid(truth_url: str, voxel_size, translation, shape, storage_options=None, depth: int = 64):
    """(z0, z1, float32 labels [z1-z0, Y, X], NaN unknown) of the ground truth on the given grid, slab by slab."""
    level = open_level(truth_url, voxel_size, storage_options)
    size, first = np.asarray(voxel_size, float), np.asarray(translation, float)
    for z0 in range(0, shape[0], depth):
        z1 = min(z0 + depth, shape[0])
        slab = (z1 - z0, *shape[1:])
        centre = first + np.array([z0 + (slab[0] - 1) / 2, (slab[1] - 1) / 2, (slab[2] - 1) / 2]) * size
        where = place(level.scale, level.translation, centre, size, slab)
        values = level.read_labels(level.box_low(where.start), where.shape)
        yield z0, z1, onto_grid(values[None], where, None, slab, labels=True)[0]


def instances_on_grid(truth_url: str, voxel_size, translation, shape, storage_options=None):
    """(float32 instance ids [Z, Y, X] on the given grid, NaN unknown; True) for an instance
    annotation, else (its semantic 0/1/NaN labels; False). Ids are renumbered 1..n first, so they
    survive nearest-neighbour sampling in float32."""
    level = open_level(truth_url, voxel_size, storage_options)
    size, first = np.asarray(voxel_size, float), np.asarray(translation, float)
    centre = first + (np.asarray(shape) - 1) / 2 * size
    where = place(level.scale, level.translation, centre, size, shape)
    low, encoding = level.box_low(where.start), level.encoding
    if not encoding.instance:
        return onto_grid(level.read_labels(low, where.shape)[None], where, None, shape, labels=True)[0], False
    values = level.read(low, where.shape, fill=np.nan)
    unknown = np.isnan(values) | ((values == encoding.unknown) if encoding.unknown is not None else False)
    ids, _ = relabel(np.where(unknown | (values == encoding.absent), 0, values))
    ids = np.where(unknown, np.nan, ids.astype(np.float32))
    return onto_grid(ids[None], where, None, shape, labels=True)[0], True


def score_instance_array(array: zarr.Array, storage_options=None) -> dict:
    """The challenge's instance counts of one predicted label array against its `truth`."""
    attrs = dict(array.attrs)
    truth, is_instances = instances_on_grid(attrs["truth"], attrs["voxel_size"], attrs["translation"], array.shape,
                                            storage_options)
    known = ~np.isnan(truth)
    truth = np.nan_to_num(truth) if is_instances else np.nan_to_num(truth) > 0.5
    return score_instances(np.asarray(array[...]) > 0, truth, attrs["voxel_size"], known, is_instances)


def score_array(array: zarr.Array, storage_options=None) -> dict:
    """tp, fp, fn and known voxels of one predicted label array against its `truth`."""
    attrs = dict(array.attrs)
    counts = dict.fromkeys(COUNTS, 0)
    for z0, z1, truth in truth_on_grid(attrs["truth"], attrs["voxel_size"], attrs["translation"], array.shape,
                                       storage_options):
        known = ~np.isnan(truth)
        predicted = (np.asarray(array[z0:z1]) > 0) & known
        present = (np.nan_to_num(truth) > 0.5) & known
        counts["tp"] += int(np.count_nonzero(predicted & present))
        counts["fp"] += int(np.count_nonzero(predicted & ~present))
        counts["fn"] += int(np.count_nonzero(~predicted & present))
        counts["known"] += int(np.count_nonzero(known))
    return counts


def with_scores(frame: pd.DataFrame) -> pd.DataFrame:
    """iou and dice from the counts; NaN with no known voxel or neither truth nor prediction."""
    union = frame["tp"] + frame["fp"] + frame["fn"]
    missing = (frame["known"] == 0) | (union == 0)
    frame["iou"] = (frame["tp"] / union.where(union > 0)).where(~missing)
    frame["dice"] = (2 * frame["tp"] / (frame["tp"] + union).where(union > 0)).where(~missing)
    return frame


def evaluate_store(path: str | Path, storage_options=None, instances: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(per crop/label table, per class table, overall {'dice': ..., 'iou': ...}); with `instances`,
    the challenge's instance metrics as columns of the instance classes' rows and overall
    'combined' (their mean over instance classes, as the challenge's overall instance score)."""
    path = Path(path)
    try:
        root = zarr.open_group(str(path), mode="r", zarr_format=2)
    except Exception as err:  # noqa: BLE001 - zarr's errors for a missing or foreign store vary
        raise DataError(f"{path}: not a prediction store (zarr v2 group): {type(err).__name__}") from None
    rows = []
    for crop_name, crop in sorted(root.groups()):
        for label, array in sorted(crop.arrays()):
            if "truth" not in array.attrs:
                continue
            row = {"crop": crop_name, "label": label, "voxel_size": "x".join(f"{v:g}" for v in array.attrs["voxel_size"]),
                   **score_array(array, storage_options)}
            if instances and label in INSTANCE_CLASSES:
                row.update(score_instance_array(array, storage_options))
            rows.append(row)
    if not rows:
        raise DataError(f"{path}: no array with ground truth to score (only crops predicted from a datasplit name theirs)")
    per_crop = with_scores(pd.DataFrame(rows))
    scored = per_crop[per_crop["known"] > 0]
    by_label = scored.groupby("label", sort=True)
    per_class = with_scores(by_label[list(COUNTS)].sum().reset_index())
    per_class["dice_mean_over_crops"] = by_label["dice"].mean().values
    per_class["crops"] = by_label["crop"].count().values
    overall = {metric: float(per_class[metric].mean()) for metric in ("dice", "iou")}
    if "inst_tp" in per_crop:
        per_crop = instance_scores(per_crop)
        # min_count: a semantic class's instance counts stay NaN, not 0
        per_class = per_class.join(by_label[list(INSTANCE_COUNTS)].sum(min_count=1), on="label")
        per_class = instance_scores(per_class)
        overall["combined"] = float(per_class["combined"].mean())
    return per_crop, per_class, overall


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cellmap-train evaluate", description="Score a prediction store (from `cellmap-train predict` on a "
                                "run's validation crops) against ground truth: IoU and Dice on known voxels.")
    p.add_argument("store", help="the predictions (a zarr v2 store written by predict)")
    p.add_argument("--csv", default=None, help="where to write the table (default: <store>_evaluation.csv beside it)")
    p.add_argument("--no-instances", action="store_true", help="skip the challenge's instance metrics (connected "
                   "components, matching, Hausdorff distance) of its instance classes")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        per_crop, per_class, overall = evaluate_store(args.store, instances=not args.no_instances)
    except UserError as err:
        print(f"cellmap-train evaluate: error: {err}", file=sys.stderr)
        return 1
    store = Path(args.store)
    csv_path = Path(args.csv) if args.csv else store.with_name(f"{store.stem}_evaluation.csv")
    summary = per_class.assign(crop="ALL")
    total = pd.DataFrame([{"crop": "ALL", "label": "mean", **overall}])
    pd.concat([per_crop, summary, total], ignore_index=True).to_csv(csv_path, index=False)
    pd.set_option("display.width", 200)
    shown = ["crop", "label", "voxel_size", "known", "iou", "dice"]
    print(per_crop[shown].to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="n/a"))
    print("\nPer class (over all crops):")
    print(per_class[["label", "crops", "known", "iou", "dice", "dice_mean_over_crops"]]
          .to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="n/a"))
    print(f"\nOverall: mean Dice {overall['dice']:.4f}, mean IoU {overall['iou']:.4f} "
          f"({'' if math.isfinite(overall['dice']) else 'no class scored; '}mean over classes) -> {csv_path}")
    print_instances(per_crop, per_class, overall)
    return 0


def print_instances(per_crop: pd.DataFrame, per_class: pd.DataFrame, overall: dict) -> None:
    if "inst_tp" not in per_crop:
        return
    fmt = {"float_format": lambda v: f"{v:.4f}", "na_rep": "n/a", "index": False}
    counts = {name: "Int64" for name in ("inst_tp", "inst_fp", "inst_fn")}
    rows = per_crop[per_crop["inst_tp"].notna()].astype(counts)
    print("\nInstance classes (the challenge's metrics: components, matching, Hausdorff distance in nm):")
    print(rows[["crop", "label", "inst_tp", "inst_fp", "inst_fn", "hausdorff", "f1", "combined", "instance_status"]]
          .to_string(**fmt))
    classes = per_class[per_class["inst_tp"].notna()].astype(counts)
    print(classes[["label", "inst_tp", "inst_fp", "inst_fn", "f1", "normalized_hausdorff", "combined"]].to_string(**fmt))
    print(f"Overall instance score (mean combined over instance classes): {overall['combined']:.4f}")
