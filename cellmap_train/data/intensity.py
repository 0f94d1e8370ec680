"""Random intensity changes of a training sample's raw values: gamma, contrast, blur, noise.

They act on the normalised raw (after `NormalizeRaw`), on training samples only, each with its
own probability `p`. Every random choice comes from the sample's own generator (the one its
spatial draw used), so a sample stays a function of (seed, index) and a resumed run sees the
samples an unbroken run would have. A range `[low, high]` is drawn uniformly per sample; a
single number is used as it is. They stand in for cellmap-data's RandomGamma, RandomContrast,
GaussianBlur and GaussianNoise in a challenge config (see cellmap_train/legacy/).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

Range = float | Sequence[float]


def _range(name: str, value: Range, low: float = -math.inf, strict: bool = False) -> tuple[float, float]:
    """A number or [low, high] -> (low, high), checked against the smallest allowed value."""
    pair = [value, value] if isinstance(value, (int, float)) else list(value)
    if len(pair) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair):
        raise ValueError(f"{name} must be a number or [low, high], got {value!r}")
    lo, hi = float(pair[0]), float(pair[1])
    if lo > hi or (lo <= low if strict else lo < low):
        bound = f"{'above' if strict else 'at least'} {low:g}"
        raise ValueError(f"{name} must be {bound} with low <= high, got {value!r}")
    return lo, hi


def _draw(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return bounds[0] if bounds[0] == bounds[1] else float(rng.uniform(*bounds))


def _probability(p: float) -> float:
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
    return float(p)


class RandomGamma:
    """x -> low + (high - low) * ((x - low) / (high - low)) ** gamma on the sample's own value range
    [low, high], so it works on [0, 1] raw and on mean/std-normalised raw alike (gamma < 1 brightens)."""

    def __init__(self, p: float = 0.3, gamma: Range = (0.7, 1.5)):
        self.p, self.gamma = _probability(p), _range("gamma", gamma, 0.0, strict=True)

    def __call__(self, raw: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        gamma = _draw(rng, self.gamma)
        low, high = float(raw.min()), float(raw.max())
        if high <= low:  # a flat sample has no curve to bend
            return raw
        unit = (raw - low) / (high - low)
        return (low + (high - low) * np.power(unit, gamma, dtype=np.float32)).astype(np.float32)


class RandomContrast:
    """x -> mean + factor * (x - mean) around the sample's mean; the result is clipped to the
    sample's own range, so stronger contrast saturates instead of leaving it."""

    def __init__(self, p: float = 0.3, factor: Range = (0.75, 1.25)):
        self.p, self.factor = _probability(p), _range("factor", factor, 0.0)

    def __call__(self, raw: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        factor = _draw(rng, self.factor)
        mean = float(raw.mean())
        return np.clip(mean + factor * (raw - mean), raw.min(), raw.max()).astype(np.float32)


class RandomBlur:
    """A Gaussian blur with sigma (in voxels) drawn per sample; edges are extended, not zero.
    `dims`: 2 blurs each z-slice in y and x; 3 blurs along z too; null: every axis longer than
    one voxel (2D for a [1,H,W] sample, 3D for [D,H,W]). The kernel reaches `truncate` sigmas, or
    is `kernel_size` wide (odd) when that is given, as cellmap-data's GaussianBlur takes it."""

    def __init__(self, p: float = 0.2, sigma: Range = (0.5, 1.0), dims: int | None = None, truncate: float = 3.0,
                 kernel_size: int | None = None):
        self.p, self.sigma = _probability(p), _range("sigma", sigma, 0.0, strict=True)
        if dims not in (None, 2, 3):
            raise ValueError(f"dims must be 2, 3 or null (the sample's own), got {dims!r}")
        if kernel_size is not None and (not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0):
            raise ValueError(f"kernel_size must be an odd positive integer or null, got {kernel_size!r}")
        if truncate <= 0:
            raise ValueError(f"truncate must be positive, got {truncate!r}")
        self.dims, self.truncate, self.kernel_size = dims, float(truncate), kernel_size

    def axes(self, shape: Sequence[int]) -> list[int]:
        """The axes of a [Z,Y,X] sample that are blurred."""
        if self.dims is None:
            return [axis for axis, size in enumerate(shape) if size > 1]
        return list(range(len(shape)))[-self.dims:]

    def __call__(self, raw: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        sigma = _draw(rng, self.sigma)
        radius = self.kernel_size // 2 if self.kernel_size else max(1, math.ceil(self.truncate * sigma))
        kernel = gaussian_kernel(sigma, radius)
        out = raw.astype(np.float32)
        for axis in self.axes(raw.shape):
            out = blur_axis(out, kernel, axis)
        return out


def gaussian_kernel(sigma: float, radius: int) -> np.ndarray:
    """The sampled, normalised 1D Gaussian of 2 * radius + 1 taps."""
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    return (weights / weights.sum()).astype(np.float32)


def blur_axis(values: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    """`values` convolved with a symmetric 1D kernel along one axis, edges replicated: a weighted
    sum of shifted views (a handful of taps on small samples; no scipy needed)."""
    radius, size = len(kernel) // 2, values.shape[axis]
    pad = [(0, 0)] * values.ndim
    pad[axis] = (radius, radius)
    padded = np.pad(values, pad, mode="edge")
    out = np.zeros_like(values)
    for tap, weight in enumerate(kernel):
        window = [slice(None)] * values.ndim
        window[axis] = slice(tap, tap + size)
        out += weight * padded[tuple(window)]
    return out


class RandomNoise:
    """Additive Gaussian noise, N(mean, std), with std drawn per sample."""

    def __init__(self, p: float = 0.3, std: Range = (0.0, 0.05), mean: float = 0.0):
        self.p, self.std, self.mean = _probability(p), _range("std", std, 0.0), float(mean)

    def __call__(self, raw: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        std = _draw(rng, self.std)
        noise = rng.standard_normal(raw.shape, dtype=np.float32)
        return (raw + (self.mean + std * noise)).astype(np.float32)


class IntensityTransforms:
    """The intensity changes of a training sample, in a fixed order: gamma, contrast, blur, then
    noise (noise last, so it stays sharp, as a detector's would). Each runs with its own
    probability; one left out (null) is skipped without drawing."""

    ORDER = ("gamma", "contrast", "blur", "noise")

    def __init__(self, gamma: RandomGamma | None = None, contrast: RandomContrast | None = None,
                 blur: RandomBlur | None = None, noise: RandomNoise | None = None):
        chosen = {"gamma": gamma, "contrast": contrast, "blur": blur, "noise": noise}
        self.steps = [(name, chosen[name]) for name in self.ORDER if chosen[name] is not None]

    def __call__(self, raw: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for _, step in self.steps:
            if rng.random() < step.p:
                raw = step(raw, rng)
        return raw.astype(np.float32, copy=False)

    def __repr__(self) -> str:
        return f"IntensityTransforms({', '.join(name for name, _ in self.steps) or 'nothing'})"
