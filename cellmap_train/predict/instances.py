"""The challenge's instance metrics (janelia-cellmap/cellmap-segmentation-challenge, evaluate),
written again with scipy:

- the prediction's instances are its connected components (26-connected in 3D, as cc3d labels);
- predicted and true instances are matched one to one by overlap: a minimum-cost assignment with
  cost 1 - IoU for a pair that overlaps and a little more than 1 (= left unmatched) otherwise,
  which is the challenge's min-cost flow; each group of instances linked by overlaps is solved on
  its own, so the cost matrices stay small;
- a prediction with far more instances than the truth (nP / nG above 10 + 50 exp(-nG / 5)) is not
  matched: the crop then adds nothing to its class (status `skipped_too_many_instances`);
- one Hausdorff distance (nm, the voxel size as sampling) per true instance: to its match, or
  the cap when it has none, plus the cap for every unmatched prediction. The cap is half the
  crop's shortest side (nm); each distance is normalised as 1.01 ** (-d / |voxel size|);
- per class over crops: F1 = 2 TP / (2 TP + FP + FN), the mean normalised distance, and the
  combined score sqrt(F1 * normalised distance); 1 for all three when no crop has an instance.

Unknown voxels are masked (zero in both arrays) before any of this, as the challenge masks.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

# The challenge's instance classes (cellmap_segmentation_challenge.config.INSTANCE_CLASSES).
INSTANCE_CLASSES = ("nuc", "vim", "ves", "endo", "lyso", "ld", "perox", "mito", "np", "mt", "cell", "instance")
INSTANCE_COUNTS = ("inst_tp", "inst_fp", "inst_fn", "hausdorff_norm_sum", "n_hausdorff")
UNMATCHED = 1.0 + 1e-6  # the cost of leaving an instance unmatched: more than any overlapping pair's


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """(int32 labels 1..n of the connected components of `mask`, n), every neighbour connected."""
    labels, count = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    return labels.astype(np.int32, copy=False), int(count)


def relabel(ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Instance ids (0 background) -> consecutive 1..n in the same places, and n."""
    values, inverse = np.unique(ids, return_inverse=True)
    inverse = inverse.reshape(ids.shape).astype(np.int32)
    if values.size and values[0] == 0:
        return inverse, int(values.size - 1)
    return inverse + 1, int(values.size)


def ratio_cutoff(n_truth: int) -> float:
    """The most predicted instances per true one the challenge matches."""
    return 10.0 + 50.0 * math.exp(-n_truth / 5.0)


def overlaps(truth: np.ndarray, pred: np.ndarray, n_truth: int, n_pred: int):
    """(truth index, pred index, IoU) of every overlapping pair (indices from 0)."""
    both = (truth > 0) & (pred > 0)
    t, p = truth[both].astype(np.int64) - 1, pred[both].astype(np.int64) - 1
    pairs, inter = np.unique(t * n_pred + p, return_counts=True)
    rows, cols = pairs // n_pred, pairs % n_pred
    size_t = np.bincount(truth[truth > 0].astype(np.int64) - 1, minlength=n_truth)
    size_p = np.bincount(pred[pred > 0].astype(np.int64) - 1, minlength=n_pred)
    return rows, cols, inter / (size_t[rows] + size_p[cols] - inter)


def match(truth: np.ndarray, pred: np.ndarray, n_truth: int, n_pred: int) -> dict[int, int]:
    """{pred id: truth id} of the one-to-one matching with the fewest unmatched instances and,
    among those, the highest summed IoU (overlapping pairs only)."""
    if n_truth == 0 or n_pred == 0:
        return {}
    rows, cols, iou = overlaps(truth, pred, n_truth, n_pred)
    if rows.size == 0:
        return {}
    graph = coo_matrix((np.ones(rows.size), (rows, n_truth + cols)), shape=(n_truth + n_pred,) * 2)
    _, group = connected_components(graph, directed=False)
    mapping: dict[int, int] = {}
    pair_group = group[rows]
    for g in np.unique(pair_group):
        here = pair_group == g
        r, c = rows[here], cols[here]
        ts, ps = np.unique(r), np.unique(c)
        cost = np.full((ts.size, ps.size), UNMATCHED)
        cost[np.searchsorted(ts, r), np.searchsorted(ps, c)] = 1.0 - iou[here]
        for i, j in zip(*linear_sum_assignment(cost)):
            if cost[i, j] < UNMATCHED:
                mapping[int(ps[j]) + 1] = int(ts[i]) + 1
    return mapping


def max_distance(voxel_size: Sequence[float], shape: Sequence[int]) -> float:
    """The Hausdorff cap: half the crop's shortest side, in nm."""
    return float(min(v * n / 2 for v, n in zip(voxel_size, shape)))


def normalised(distance, voxel_size: Sequence[float]):
    """1.01 ** (-d / |voxel size|): 1 at 0, towards 0 far away."""
    return np.power(1.01, -np.asarray(distance, float) / float(np.linalg.norm(voxel_size)))


def hausdorff(a: np.ndarray, b: np.ndarray, voxel_size: Sequence[float], cap: float) -> float:
    """The Hausdorff distance (nm) between two non-empty masks, capped: computed in the box
    around both (every nearest voxel lies in it, so the box changes nothing)."""
    where = np.argwhere(a | b)
    box = tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(where.min(0), where.max(0)))
    a, b = a[box], b[box]
    to_b = ndimage.distance_transform_edt(~b, sampling=voxel_size)
    to_a = ndimage.distance_transform_edt(~a, sampling=voxel_size)
    return float(min(max(to_b[a].max(), to_a[b].max()), cap))


def distances(truth: np.ndarray, pred: np.ndarray, mapping: dict[int, int], n_truth: int, n_pred: int,
              voxel_size: Sequence[float]) -> np.ndarray:
    """One capped distance per true instance (the cap when unmatched), then the cap for each
    unmatched prediction."""
    cap = max_distance(voxel_size, truth.shape)
    to_pred = {t: p for p, t in mapping.items()}
    truth_boxes = ndimage.find_objects(truth, n_truth)
    pred_boxes = ndimage.find_objects(pred, n_pred)
    out = []
    for t in range(1, n_truth + 1):
        p = to_pred.get(t)
        if p is None or truth_boxes[t - 1] is None:
            out.append(cap)
            continue
        box = tuple(slice(min(s.start, q.start), max(s.stop, q.stop)) for s, q in zip(truth_boxes[t - 1], pred_boxes[p - 1]))
        out.append(hausdorff(truth[box] == t, pred[box] == p, voxel_size, cap))
    out += [cap] * (n_pred - len(mapping))
    return np.asarray(out, dtype=float)


def score_instances(pred: np.ndarray, truth: np.ndarray, voxel_size: Sequence[float], known: np.ndarray | None = None,
                    truth_is_instances: bool = True) -> dict:
    """The challenge's per-crop instance counts of a binary prediction against true instance ids
    (0 background; `truth_is_instances=False`: a binary truth, whose components are its instances)."""
    pred = np.asarray(pred) > 0
    truth = np.asarray(truth)
    if known is not None:
        pred, truth = pred & known, np.where(known, truth, 0)
    truth, n_truth = relabel(truth) if truth_is_instances else components(truth > 0)
    pred, n_pred = components(pred)
    if n_truth and n_pred / n_truth > ratio_cutoff(n_truth):
        return {**dict.fromkeys(INSTANCE_COUNTS, 0), "hausdorff": math.nan, "instance_status": "skipped_too_many_instances"}
    mapping = match(truth, pred, n_truth, n_pred)
    found = distances(truth, pred, mapping, n_truth, n_pred, voxel_size)
    return {"inst_tp": len(mapping), "inst_fp": n_pred - len(mapping), "inst_fn": n_truth - len(mapping),
            "hausdorff_norm_sum": float(normalised(found, voxel_size).sum()), "n_hausdorff": int(found.size),
            "hausdorff": float(found.mean()) if found.size else math.nan, "instance_status": "scored"}


def instance_scores(frame):
    """f1, normalized_hausdorff and combined (the challenge's per-class formulas) from summed counts:
    a pandas frame with INSTANCE_COUNTS columns, rows without them (semantic classes) left NaN."""
    tp, fp, fn = frame["inst_tp"], frame["inst_fp"], frame["inst_fn"]
    count = frame["n_hausdorff"]
    denom = 2 * tp + fp + fn
    empty = (denom == 0) & (count == 0)
    f1 = (2 * tp / denom.where(denom > 0)).fillna(0.0)
    norm = (frame["hausdorff_norm_sum"] / count.where(count > 0)).fillna(0.0)
    scored = tp.notna()
    frame["f1"] = f1.mask(empty, 1.0).where(scored)
    frame["normalized_hausdorff"] = norm.mask(empty, 1.0).where(scored)
    frame["combined"] = np.sqrt(frame["f1"] * frame["normalized_hausdorff"])
    return frame
