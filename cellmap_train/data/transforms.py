"""Sample transforms on numpy arrays: spatial ones move raw and labels together, value ones
touch one of them. Randomness comes from the generator passed in, so a sample is a pure
function of (seed, sample index) whatever worker draws it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cellmap_train.data.resample import sample_nearest, sampling_grid
from cellmap_train.data.label_transfer import UNKNOWN

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


def rotation_margin(shape: Sequence[int], matrix: np.ndarray) -> np.ndarray:
    """Voxels of context, each side of each axis, that a sample of `shape` turned by `matrix`
    reads: with them every output voxel, and the neighbours it is interpolated from, comes from
    real data instead of the padding. An axis the turn leaves alone needs none."""
    half = (np.asarray(shape, dtype=float) - 1) / 2
    excess = np.abs(matrix) @ half - half  # how far past the sample the furthest source voxel lies
    onto_voxels = np.isclose(np.abs(matrix), 1).any(axis=1)  # whole-voxel moves: nothing interpolated
    return np.maximum(np.ceil(excess - 1e-6) + np.where(onto_voxels, 0, 1), 0).astype(int)


def _turn_raw(raw: np.ndarray, matrix: np.ndarray, out_shape: Sequence[int], grids: dict) -> np.ndarray:
    """raw [*in] turned by linear interpolation into `out_shape`, 0 from outside; an integer
    dtype is kept, so that value transforms scale it right."""
    out = _turn(raw[None].astype(np.float32), matrix, out_shape, "bilinear", grids)[0]
    if np.issubdtype(raw.dtype, np.integer):
        info = np.iinfo(raw.dtype)
        out = np.clip(np.rint(out), info.min, info.max).astype(raw.dtype)
    return out


def _turn_labels(labels: np.ndarray, matrix: np.ndarray, out_shape: Sequence[int], grids: dict) -> np.ndarray:
    """labels [C, *in] turned by nearest neighbour on raw's sampling grid, NaN from outside."""
    out = _turn(np.add(labels, 1, dtype=np.float32), matrix, out_shape, "nearest", grids)  # 0 padding = from outside
    out -= 1
    out[out == -1] = np.nan
    return out


def _fixed_axes(matrix: np.ndarray) -> list[int]:
    """The axes a turn leaves alone (z for a turn about z; a flat sample's turns are in its plane)."""
    off_axis = np.abs(matrix - np.eye(3))
    return [i for i in range(3) if off_axis[i].max() < 1e-9 and off_axis[:, i].max() < 1e-9]


def _turn(values: np.ndarray, matrix: np.ndarray, out_shape: Sequence[int], mode: str, grids: dict) -> np.ndarray:
    """float32 values [C, *in] turned about their centre into [C, *out_shape], zeros from outside.

    A turn that leaves an axis fixed (about z, or any in-plane turn of a [1,H,W] sample) is
    done as a 2D turn batched over that axis: cheaper, and exact for flat samples."""
    in_shape = values.shape[1:]
    fixed = [i for i in _fixed_axes(matrix) if in_shape[i] == out_shape[i]]
    if not fixed:
        grid = sampling_grid(out_shape, in_shape, matrix, np.zeros(3), grids)
        return F.grid_sample(torch.from_numpy(values)[None], grid, mode=mode, padding_mode="zeros",
                             align_corners=False)[0].numpy()
    axis = min(fixed, key=lambda i: in_shape[i] != 1)  # a flat axis first
    turned = [i for i in range(3) if i != axis]
    batch = np.moveaxis(values, axis + 1, 0)  # [N, C, *plane]
    grid = sampling_grid([out_shape[i] for i in turned], [in_shape[i] for i in turned], matrix[np.ix_(turned, turned)],
                         np.zeros(2), grids)
    out = F.grid_sample(torch.from_numpy(batch), grid.expand(batch.shape[0], *grid.shape[1:]), mode=mode,
                        padding_mode="zeros", align_corners=False).numpy()
    return np.moveaxis(out, 0, axis + 1)


@dataclass(frozen=True)
class SpatialDraw:
    """One sample's random spatial choices, drawn before the sample is read so that the read
    can take the context a rotation needs when `read_context` is on (`raw_margin`, `label_margin`:
    voxels each side of each axis, in the order the arrays are read; zero when it is off)."""

    flips: tuple[int, ...]  # axes flipped (z=0, y=1, x=2)
    order: tuple[int, ...]  # then transposed: axis a of the result is axis order[a]
    matrix: np.ndarray | None  # then rotated; None: not rotated
    raw_shape: tuple[int, ...]  # the sample's shapes, without the margins
    label_shape: tuple[int, ...]
    read_context: bool = False

    @property
    def raw_margin(self) -> np.ndarray:
        return self._margin(self.raw_shape)

    @property
    def label_margin(self) -> np.ndarray:
        return self._margin(self.label_shape)

    def _margin(self, shape) -> np.ndarray:
        read = np.zeros(3, dtype=int)
        if self.read_context and self.matrix is not None:  # where the rotation happens: after the transpose
            read[list(self.order)] = rotation_margin([shape[i] for i in self.order], self.matrix)
        return read

    def apply(self, raw: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """raw [Z,Y,X] and labels [C,Z,Y,X], read with or without the margins -> the sample's shapes.

        The inputs may be larger than the outputs: the margin around the sample is the context
        the rotated corners are filled from (`rotation_margin`). Voxels whose source lies outside
        the inputs are 0 in raw and unknown (NaN) in labels."""
        grids: dict = {}  # raw and labels share a plane turn's grid (3 floats per output voxel: worth reusing)
        return self.apply_raw(raw, grids), self.apply_labels(labels, grids)

    def apply_raw(self, raw: np.ndarray, grids: dict | None = None) -> np.ndarray:
        """raw [Z,Y,X] read on the sample's grid -> flipped, swapped and turned (`apply`)."""
        view = raw
        for i in self.flips:
            view = np.flip(view, i)
        view = view.transpose(self.order)
        if self.matrix is None:
            return view
        return _turn_raw(view, self.matrix, self.out_shapes()[0], {} if grids is None else grids)

    def apply_labels(self, labels: np.ndarray, grids: dict | None = None) -> np.ndarray:
        """labels [C,Z,Y,X] read on the sample's grid -> flipped, swapped and turned (`apply`)."""
        label_shape = self.out_shapes()[1]
        if self.matrix is not None and not _fixed_axes(self.matrix):
            # a 3D turn: an index gather from the labels as read, the flips and the axis order folded
            # into the map; against sampling a copy of the flipped, swapped labels it is 1.2-1.45x
            # faster with 3 classes and 1.9-4.5x with 48 (benchmarks/RESULTS.md)
            return sample_nearest(labels, self.read_map(), (np.asarray(labels.shape[1:]) - 1) / 2, label_shape)
        view = labels
        for i in self.flips:
            view = np.flip(view, i + 1)
        view = view.transpose([0] + [i + 1 for i in self.order])
        if self.matrix is None:
            return view
        # a batched 2D turn on raw's grid: cheapest for flat samples
        return _turn_labels(view, self.matrix, label_shape, {} if grids is None else grids)

    def read_map(self) -> np.ndarray:
        """Centred offsets of the sample as it comes out -> as read, in sample voxels: the flips,
        the axis order and the rotation as one matrix (for samples interpolated from a level)."""
        return self._frame() @ (self.matrix if self.matrix is not None else np.eye(3))

    def out_shapes(self) -> tuple[list[int], list[int]]:
        """The raw and label shapes of the sample as it comes out (after the axis order)."""
        return [self.raw_shape[i] for i in self.order], [self.label_shape[i] for i in self.order]

    def _frame(self) -> np.ndarray:
        """Centred coordinates after the flips and the axis order -> as read."""
        frame = np.zeros((3, 3))
        for a, i in enumerate(self.order):
            frame[i, a] = -1.0 if i in self.flips else 1.0
        return frame


class SpatialTransform:
    """Random flips, axis swaps and rotations applied identically to raw (Z,Y,X) and labels (C,Z,Y,X).

    mirror: per-axis flip probability, e.g. {x: 0.5, y: 0.5}.
    transpose: axes that may be permuted among themselves; an axis is only swapped with one
    of equal size, so a [1,H,W] sample never moves its single slice into the plane.
    rotate: per-axis angle range in degrees, e.g. {z: [-180, 180]} turns the y-x plane.
    Raw is interpolated linearly, labels by nearest neighbour.
    read_context: false: a rotated sample is cut at its own size and then turned, so the corners
    turned in from outside it are unknown (labels NaN, raw 0). true: the datasets read the margin
    the rotation turns into the corners (`SpatialDraw`), so they hold real data, as in cellmap-data;
    only what lies outside the volume or the crop stays unknown. It costs the larger read.
    """

    def __init__(self, mirror: Mapping[str, float] | None = None, transpose: Sequence[str] | None = None,
                 rotate: Mapping[str, Sequence[float]] | None = None, read_context: bool = False):
        self.read_context = bool(read_context)
        self.mirror = {axis: float(p) for axis, p in (mirror or {}).items()}
        self.transpose = list(transpose or [])
        self.rotate = {axis: (float(lo), float(hi)) for axis, (lo, hi) in (rotate or {}).items()}
        for axis in [*self.mirror, *self.transpose, *self.rotate]:
            if axis not in AXES:
                raise ValueError(f"unknown axis {axis!r} in spatial transform (use z, y, x)")

    def draw(self, rng: np.random.Generator, raw_shape: Sequence[int], label_shape: Sequence[int] | None = None) -> SpatialDraw:
        """This sample's flips, axis order and rotation, for a sample of these shapes ([Z,Y,X])."""
        flips = tuple(AXES.index(axis) for axis, prob in self.mirror.items() if rng.random() < prob)
        order = list(range(3))
        if len(self.transpose) > 1:
            by_size: dict[int, list[int]] = {}
            for axis in self.transpose:
                i = AXES.index(axis)
                by_size.setdefault(raw_shape[i], []).append(i)
            for group in by_size.values():
                for src, dst in zip(sorted(group), rng.permutation(group)):
                    order[src] = int(dst)
        matrix = None
        if self.rotate:
            angles = {axis: rng.uniform(lo, hi) for axis, (lo, hi) in self.rotate.items()}
            if any(abs(a) % 360 > 1e-6 for a in angles.values()):
                matrix = rotation_matrix(angles)
        return SpatialDraw(flips, tuple(order), matrix, tuple(raw_shape), tuple(label_shape or raw_shape), self.read_context)

    def __call__(self, raw: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Transform a sample already read, without context: rotated corners are unknown."""
        return self.draw(rng, raw.shape, labels.shape[1:]).apply(raw, labels)


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
    """Values above `threshold` are 1, the rest 0. `dtype: uint8` (the default) marks unknown (NaN)
    voxels UNKNOWN: a quarter of float32's bytes on the way to the device, where the engine turns
    them into float32 with NaN (`cellmap_train/data/label_transfer.py`). `dtype: float32` keeps NaN, for
    loaders read outside the engine."""

    DTYPES = ("uint8", "float32")

    def __init__(self, threshold: float = 0.0, dtype: str = "uint8"):
        if dtype not in self.DTYPES:
            raise ValueError(f"BinarizeLabels dtype must be one of {', '.join(self.DTYPES)}, got {dtype!r}")
        self.threshold, self.dtype = float(threshold), dtype

    def __call__(self, labels: np.ndarray) -> np.ndarray:
        unknown = np.isnan(labels)
        if self.dtype == "float32":
            out = (labels > self.threshold).astype(np.float32)
            out[unknown] = np.nan
            return out
        out = (labels > self.threshold).view(np.uint8)  # False/True are stored as 0/1: no copy
        out[unknown] = UNKNOWN
        return out


class SampleTransforms:
    """What a dataset applies to each sample: spatial first, then value transforms.
    (A plain class, not a dataclass: OmegaConf would turn a dataclass passed through
    `instantiate(..., transforms=obj)` back into a config node.)"""

    def __init__(self, spatial: SpatialTransform | None = None, raw: NormalizeRaw | None = None,
                 target: BinarizeLabels | None = None, intensity=None):
        self.spatial, self.raw, self.target = spatial, raw, target
        self.intensity = intensity  # data/intensity.py's IntensityTransforms: training samples only

    def draw(self, rng: np.random.Generator, raw_shape: Sequence[int], label_shape: Sequence[int]) -> SpatialDraw | None:
        """The sample's spatial choices, made before it is read (None: no spatial transform)."""
        return self.spatial.draw(rng, raw_shape, label_shape) if self.spatial is not None else None

    def values(self, raw: np.ndarray, labels: np.ndarray,
               rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The value transforms of a sample already on its grid: raw float32, labels uint8 after
        `BinarizeLabels`, float32 with NaN = unknown without a target transform. `rng` is the
        sample's generator after its spatial draw (random value transforms draw from it)."""
        raw = self.raw(raw) if self.raw is not None else raw.astype(np.float32)
        if self.intensity is not None and rng is not None:  # no rng: a validation sample, left as read
            raw = self.intensity(raw, rng)
        labels = self.target(labels) if self.target is not None else labels.astype(np.float32)
        return np.ascontiguousarray(raw), np.ascontiguousarray(labels)

    def apply(self, draw: SpatialDraw | None, raw: np.ndarray, labels: np.ndarray,
              rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """raw [Z,Y,X] and labels [C,Z,Y,X], read with `draw`'s margins -> the sample (`values`)."""
        if draw is not None:
            raw, labels = draw.apply(raw, labels)
        return self.values(raw, labels, rng)

    def __call__(self, raw: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A sample already read, without context (rotated corners unknown)."""
        return self.apply(self.draw(rng, raw.shape, labels.shape[1:]), raw, labels, rng)
