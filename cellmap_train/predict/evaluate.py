"""Score a prediction store against ground truth: per crop and class the IoU and Dice over the
voxels the annotation knows (unknown voxels and classes a crop does not annotate are left out, as
in training's validation), then per class over all crops (from the summed counts, as training's
`dice/<class>`) and overall (the mean of the per-class scores, as `dice/mean`).

Ground truth is found from each array's `truth` attribute (written by `predict` for the crops of
a datasplit) and read, slab by slab, on the prediction's grid: nearest neighbour where the
annotation's own grid differs. The challenge's instance metrics (connected components, matching,
Hausdorff distance) are not computed here: they need a labelling and distance-transform library
(scipy or similar) that is not a dependency.
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


def evaluate_store(path: str | Path, storage_options=None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(per crop/label table, per class table, overall {'dice': ..., 'iou': ...})."""
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
            rows.append({"crop": crop_name, "label": label, "voxel_size": "x".join(f"{v:g}" for v in array.attrs["voxel_size"]),
                         **score_array(array, storage_options)})
    if not rows:
        raise DataError(f"{path}: no array with ground truth to score (only crops predicted from a datasplit name theirs)")
    per_crop = with_scores(pd.DataFrame(rows))
    scored = per_crop[per_crop["known"] > 0]
    per_class = scored.groupby("label", sort=True)[list(COUNTS)].sum().reset_index()
    per_class = with_scores(per_class)
    per_class["dice_mean_over_crops"] = scored.groupby("label", sort=True)["dice"].mean().values
    per_class["crops"] = scored.groupby("label", sort=True)["crop"].count().values
    overall = {metric: float(per_class[metric].mean()) for metric in ("dice", "iou")}
    return per_crop, per_class, overall


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cellmap-train evaluate", description="Score a prediction store (from `cellmap-train predict` on a "
                                "run's validation crops) against ground truth: IoU and Dice on known voxels.")
    p.add_argument("store", help="the predictions (a zarr v2 store written by predict)")
    p.add_argument("--csv", default=None, help="where to write the table (default: <store>_evaluation.csv beside it)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        per_crop, per_class, overall = evaluate_store(args.store)
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
    print("Instance metrics (the challenge's matching, Hausdorff distance) are not computed: no labelling library is a dependency.")
    return 0
