"""Sample transforms on numpy arrays: spatial ones move raw and labels together, value ones
touch one of them. Randomness comes from the generator passed in, so a sample is a pure
function of (seed, sample index) whatever worker draws it."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

AXES = "zyx"


def rotation_matrix(angles_deg: Mapping[str, float]) -> np.ndarray:
    """3x3 rotation in (z, y, x) coordinates: about x, then y, then z (right-handed)."""
    matrix = np.eye(3)
    for axis in "xyz":
        angle = np.deg2rad(angles_deg.get(axis, 0.0))
        if angle == 0:
            continue
        a, b = [i for i in range(3) if i != AXES.index(axis)]  # the plane it turns
        turn = np.eye(3)
        turn[a, a] = turn[b, b] = np.cos(angle)
        turn[a, b], turn[b, a] = -np.sin(angle), np.sin(angle)
        matrix = turn @ matrix
    return matrix


def rotate_sample(raw: np.ndarray, labels: np.ndarray, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotate raw [Z,Y,X] (linear) and labels [C,Z,Y,X] (nearest) about the sample centre.

    Voxels rotated in from outside the sample are 0 in raw and unknown (NaN) in labels.
    A rotation that leaves an axis fixed (about z, or any in-plane turn of a [1,H,W] sample)
    is done as a 2D rotation batched over that axis: cheaper, and exact for flat samples.
    """
    off_axis = np.abs(matrix - np.eye(3))
    fixed = [i for i in range(3) if off_axis[i].max() < 1e-9 and off_axis[:, i].max() < 1e-9]
    fixed.sort(key=lambda i: raw.shape[i] != 1)  # a flat axis first
    axis = fixed[0] if fixed else None
    turned = [i for i in range(3) if i != axis]
    # [N, *size] and [N, C, *size]: N runs over the fixed axis (N = 1 for a full 3D turn)
    raw_b = np.moveaxis(raw, axis, 0) if axis is not None else raw[None]
    lab_b = np.moveaxis(labels, axis + 1, 0) if axis is not None else labels[None]
    grid = _sampling_grid(raw_b.shape[1:], matrix[np.ix_(turned, turned)])
    grid = grid.expand(raw_b.shape[0], *grid.shape[1:])
    raw_out = F.grid_sample(torch.from_numpy(raw_b.astype(np.float32))[:, None], grid, mode="bilinear",
                            padding_mode="zeros", align_corners=False)[:, 0].numpy()
    # labels shifted by 1 so that the 0 padding marks what came from outside the sample
    lab_out = F.grid_sample(torch.from_numpy(np.add(lab_b, 1, dtype=np.float32)), grid, mode="nearest",
                            padding_mode="zeros", align_corners=False).numpy()
    lab_out -= 1
    lab_out[lab_out == -1] = np.nan
    raw_out = np.moveaxis(raw_out, 0, axis) if axis is not None else raw_out[0]
    lab_out = np.moveaxis(lab_out, 0, axis + 1) if axis is not None else lab_out[0]
    if np.issubdtype(raw.dtype, np.integer):  # keep the dtype so value transforms scale it right
        info = np.iinfo(raw.dtype)
        raw_out = np.clip(np.rint(raw_out), info.min, info.max).astype(raw.dtype)
    return raw_out, lab_out


def _sampling_grid(size: Sequence[int], matrix: np.ndarray) -> torch.Tensor:
    """grid_sample's grid [1, *size, d] for `matrix` (voxel units, axes in array order) turning
    about the centre: output voxel k of an axis of n sits at normalised (2k + 1) / n - 1
    (align_corners=False). Built with numpy broadcasting: cheaper than affine_grid for a sample."""
    d = len(size)
    half = np.asarray(size, dtype=float) / 2
    theta = matrix * half[None, :] / half[:, None]  # the same turn in normalised coordinates
    axes = [((2 * np.arange(n) + 1) / n - 1).reshape([n if j == k else 1 for k in range(d)]) for j, n in enumerate(size)]
    grid = np.empty((1, *size, d), dtype=np.float32)
    for i in range(d):  # grid_sample wants x, y(, z) order: array axis i is grid component d-1-i
        grid[0, ..., d - 1 - i] = sum(theta[i, j] * axes[j] for j in range(d) if theta[i, j] != 0)
    return torch.from_numpy(grid)


class SpatialTransform:
    """Random flips, axis swaps and rotations applied identically to raw (Z,Y,X) and labels (C,Z,Y,X).

    mirror: per-axis flip probability, e.g. {x: 0.5, y: 0.5}.
    transpose: axes that may be permuted among themselves; an axis is only swapped with one
    of equal size, so a [1,H,W] sample never moves its single slice into the plane.
    rotate: per-axis angle range in degrees, e.g. {z: [-180, 180]} turns the y-x plane.
    Raw is interpolated linearly, labels by nearest neighbour; corners rotated in are unknown.
    """

    def __init__(self, mirror: Mapping[str, float] | None = None, transpose: Sequence[str] | None = None,
                 rotate: Mapping[str, Sequence[float]] | None = None):
        self.mirror = {axis: float(p) for axis, p in (mirror or {}).items()}
        self.transpose = list(transpose or [])
        self.rotate = {axis: (float(lo), float(hi)) for axis, (lo, hi) in (rotate or {}).items()}
        for axis in [*self.mirror, *self.transpose, *self.rotate]:
            if axis not in AXES:
                raise ValueError(f"unknown axis {axis!r} in spatial transform (use z, y, x)")

    def __call__(self, raw: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        for axis, prob in self.mirror.items():
            if rng.random() < prob:
                i = AXES.index(axis)
                raw, labels = np.flip(raw, i), np.flip(labels, i + 1)
        if len(self.transpose) > 1:
            raw, labels = self._transpose(raw, labels, rng)
        if self.rotate:
            angles = {axis: rng.uniform(lo, hi) for axis, (lo, hi) in self.rotate.items()}
            if any(abs(a) % 360 > 1e-6 for a in angles.values()):
                raw, labels = rotate_sample(raw, labels, rotation_matrix(angles))
        return raw, labels

    def _transpose(self, raw, labels, rng):
        order = list(range(3))
        by_size: dict[int, list[int]] = {}
        for axis in self.transpose:
            i = AXES.index(axis)
            by_size.setdefault(raw.shape[i], []).append(i)
        for group in by_size.values():
            for src, dst in zip(sorted(group), rng.permutation(group)):
                order[src] = int(dst)
        return raw.transpose(order), labels.transpose([0] + [i + 1 for i in order])


class NormalizeRaw:
    """`unit`: scale by the dtype's range to [0, 1]; `meanstd`: (x - mean) / std."""

    def __init__(self, mode: str = "unit", mean: float = 0.5, std: float = 0.25):
        if mode not in ("unit", "meanstd"):
            raise ValueError(f"NormalizeRaw mode must be 'unit' or 'meanstd', got {mode!r}")
        self.mode, self.mean, self.std = mode, float(mean), float(std)

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        if self.mode == "meanstd":
            return ((raw.astype(np.float32) - self.mean) / self.std).astype(np.float32)
        scale = float(np.iinfo(raw.dtype).max) if np.issubdtype(raw.dtype, np.integer) else 1.0
        return raw.astype(np.float32) / scale


class BinarizeLabels:
    """Values above `threshold` are 1, the rest 0; unknown (NaN) stays NaN."""

    def __init__(self, threshold: float = 0.0):
        self.threshold = float(threshold)

    def __call__(self, labels: np.ndarray) -> np.ndarray:
        out = (labels > self.threshold).astype(np.float32)
        out[np.isnan(labels)] = np.nan
        return out


class SampleTransforms:
    """What a dataset applies to each sample: spatial first, then value transforms.
    (A plain class, not a dataclass: OmegaConf would turn a dataclass passed through
    `instantiate(..., transforms=obj)` back into a config node.)"""

    def __init__(self, spatial: SpatialTransform | None = None, raw: NormalizeRaw | None = None,
                 target: BinarizeLabels | None = None):
        self.spatial, self.raw, self.target = spatial, raw, target

    def __call__(self, raw: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if self.spatial is not None:
            raw, labels = self.spatial(raw, labels, rng)
        raw = self.raw(raw) if self.raw is not None else raw.astype(np.float32)
        labels = self.target(labels) if self.target is not None else labels.astype(np.float32)
        return np.ascontiguousarray(raw), np.ascontiguousarray(labels)
