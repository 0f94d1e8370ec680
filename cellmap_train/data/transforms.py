"""Sample transforms on numpy arrays: spatial ones move raw and labels together, value ones
touch one of them. Randomness comes from the generator passed in, so a sample is a pure
function of (seed, sample index) whatever worker draws it."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

AXES = "zyx"


class SpatialTransform:
    """Random flips and axis swaps applied identically to raw (Z,Y,X) and labels (C,Z,Y,X).

    mirror: per-axis flip probability, e.g. {x: 0.5, y: 0.5}.
    transpose: axes that may be permuted among themselves; an axis is only swapped with one
    of equal size, so a [1,H,W] sample never moves its single slice into the plane.
    """

    def __init__(self, mirror: Mapping[str, float] | None = None, transpose: Sequence[str] | None = None):
        self.mirror = {axis: float(p) for axis, p in (mirror or {}).items()}
        self.transpose = list(transpose or [])
        for axis in [*self.mirror, *self.transpose]:
            if axis not in AXES:
                raise ValueError(f"unknown axis {axis!r} in spatial transform (use z, y, x)")

    def __call__(self, raw: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        for axis, prob in self.mirror.items():
            if rng.random() < prob:
                i = AXES.index(axis)
                raw, labels = np.flip(raw, i), np.flip(labels, i + 1)
        if len(self.transpose) > 1:
            order = list(range(3))
            by_size: dict[int, list[int]] = {}
            for axis in self.transpose:
                i = AXES.index(axis)
                by_size.setdefault(raw.shape[i], []).append(i)
            for group in by_size.values():
                for src, dst in zip(sorted(group), rng.permutation(group)):
                    order[src] = int(dst)
            raw, labels = raw.transpose(order), labels.transpose([0] + [i + 1 for i in order])
        return raw, labels


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
