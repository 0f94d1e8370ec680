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
    unit = np.eye(3)
    fixed = [i for i in range(3) if np.allclose(matrix[i], unit[i]) and np.allclose(matrix[:, i], unit[i])]
    fixed.sort(key=lambda i: raw.shape[i] != 1)  # a flat axis first
    raw_t = torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32))
    lab_t = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32)) + 1  # 0 now means rotated-in
    if fixed:
        axis = fixed[0]
        keep = [i for i in range(3) if i != axis]
        raw_b = raw_t.movedim(axis, 0)[:, None]                   # [N, 1, H, W]
        lab_b = lab_t.movedim(axis + 1, 0)                       # [N, C, H, W]
        raw_out, lab_out = _grid_rotate(raw_b, lab_b, matrix[np.ix_(keep, keep)])
        raw_out, lab_out = raw_out[:, 0].movedim(0, axis), lab_out.movedim(0, axis + 1)
    else:
        raw_out, lab_out = _grid_rotate(raw_t[None, None], lab_t[None], matrix)
        raw_out, lab_out = raw_out[0, 0], lab_out[0]
    lab_out = torch.where(lab_out == 0, torch.nan, lab_out - 1)
    raw_np = raw_out.numpy()
    if np.issubdtype(raw.dtype, np.integer):  # keep the dtype so value transforms scale it right
        info = np.iinfo(raw.dtype)
        raw_np = np.clip(np.round(raw_np), info.min, info.max).astype(raw.dtype)
    return raw_np, lab_out.numpy()


def _grid_rotate(raw: torch.Tensor, labels: torch.Tensor, matrix: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """grid_sample [N, C, *size] with `matrix` (voxel units, axes in array order) about the centre."""
    size = list(raw.shape[2:])
    half = np.asarray(size, dtype=float) / 2  # normalised coordinate = voxel offset from centre / half
    theta_arr = (matrix * half[None, :]) / half[:, None]
    theta = torch.zeros(1, len(size), len(size) + 1, dtype=torch.float32)
    theta[0, :, :-1] = torch.from_numpy(theta_arr[::-1, ::-1].copy())  # affine_grid wants x, y(, z) order
    grid = F.affine_grid(theta, [1, 1, *size], align_corners=False).expand(raw.shape[0], *([-1] * (len(size) + 1)))
    raw_out = F.grid_sample(raw, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    lab_out = F.grid_sample(labels, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return raw_out, lab_out


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
