"""Sample transforms on numpy arrays: spatial ones move raw and labels together, value ones
touch one of them. Randomness comes from the generator passed in, so a sample is a pure
function of (seed, sample index) whatever worker draws it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cellmap_train.labels import UNKNOWN

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
        grid = _sampling_grid(out_shape, in_shape, matrix, grids)
        return F.grid_sample(torch.from_numpy(values)[None], grid, mode=mode, padding_mode="zeros",
                             align_corners=False)[0].numpy()
    axis = min(fixed, key=lambda i: in_shape[i] != 1)  # a flat axis first
    turned = [i for i in range(3) if i != axis]
    batch = np.moveaxis(values, axis + 1, 0)  # [N, C, *plane]
    grid = _sampling_grid([out_shape[i] for i in turned], [in_shape[i] for i in turned], matrix[np.ix_(turned, turned)], grids)
    out = F.grid_sample(torch.from_numpy(batch), grid.expand(batch.shape[0], *grid.shape[1:]), mode=mode,
                        padding_mode="zeros", align_corners=False).numpy()
    return np.moveaxis(out, 0, axis + 1)


def _sampling_grid(out_size: Sequence[int], in_size: Sequence[int], matrix: np.ndarray, grids: dict) -> torch.Tensor:
    """grid_sample's grid [1, *out_size, d] for `matrix` (voxel units, axes in array order)
    turning about the common centre: voxel k of an axis of n sits at normalised (2k + 1) / n - 1
    (align_corners=False). Built with numpy broadcasting: cheaper than affine_grid for a sample.
    `grids` keeps the ones made for this matrix, by size."""
    key = (tuple(out_size), tuple(in_size))
    if key not in grids:
        grids[key] = _make_grid(out_size, in_size, matrix)
    return grids[key]


def _gather_nearest(labels: np.ndarray, matrix: np.ndarray, out_shape: Sequence[int]) -> np.ndarray:
    """labels [C, *in] -> float32 [C, *out_shape]: output voxel k takes the input voxel nearest to
    centre_in + matrix @ (k - centre_out), NaN where that lies outside the input. `matrix` may
    be any 3x3 map, e.g. a rotation composed with flips and axis swaps (`SpatialDraw`).

    A gather, not an interpolation: one index per output voxel, shared by the channels; an input
    axis that depends on few output axes keeps its index 1-long along the others."""
    values = np.ascontiguousarray(labels, dtype=np.float32)
    in_shape, d = values.shape[1:], len(out_shape)
    centre_in, centre_out = (np.asarray(in_shape) - 1) / 2, (np.asarray(out_shape) - 1) / 2
    steps = [(np.arange(n) - c).reshape([n if a == j else 1 for a in range(d)])
             for j, (n, c) in enumerate(zip(out_shape, centre_out))]
    flat, outside, stride = None, None, 1
    for i in reversed(range(d)):  # flat index into the C-ordered input, last axis first
        # only the output axes this input axis depends on are spelled out; the rest broadcast
        index = sum((matrix[i, j] * steps[j] for j in range(d) if matrix[i, j] != 0), centre_in[i])
        np.rint(index, out=index)
        reach = float(np.abs(matrix[i]) @ centre_out)  # the furthest source along this axis, from the corners
        if round(centre_in[i] - reach) < 0 or round(centre_in[i] + reach) > in_shape[i] - 1:
            beyond = (index < 0) | (index > in_shape[i] - 1)
            outside = beyond if outside is None else outside | beyond
            np.clip(index, 0, in_shape[i] - 1, out=index)
        index *= stride
        # float64 sums are exact far beyond any array's size; in place where the shapes allow,
        # since fresh full-size buffers cost as much as the arithmetic
        if flat is None:
            flat = index
        elif index.shape == np.broadcast_shapes(flat.shape, index.shape):
            flat = np.add(index, flat, out=index)
        else:
            flat = flat + index
        stride *= in_shape[i]
    flat = np.broadcast_to(flat, out_shape).astype(np.intp)
    out = values.reshape(values.shape[0], -1).take(flat, axis=1)
    if outside is not None:
        np.copyto(out, np.nan, where=outside)  # broadcast, not spelled out per channel
    return out


def _make_grid(out_size: Sequence[int], in_size: Sequence[int], matrix: np.ndarray) -> torch.Tensor:
    d = len(out_size)
    half_out, half_in = np.asarray(out_size, dtype=float) / 2, np.asarray(in_size, dtype=float) / 2
    theta = matrix * half_out[None, :] / half_in[:, None]  # the same turn in normalised coordinates
    axes = [((2 * np.arange(n) + 1) / n - 1).reshape([n if j == k else 1 for k in range(d)]) for j, n in enumerate(out_size)]
    grid = np.empty((1, *out_size, d), dtype=np.float32)
    component = np.empty(tuple(out_size))  # float64, rounded once into the grid: the same float path as ever
    for i in range(d):  # grid_sample wants x, y(, z) order: input axis i is grid component d-1-i
        component.fill(0)
        for j in range(d):
            if theta[i, j] != 0:
                component += theta[i, j] * axes[j]  # in place: no full-size temporaries
        grid[0, ..., d - 1 - i] = component
    return torch.from_numpy(grid)


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
        raw_view, labels_view = raw, labels
        for i in self.flips:
            raw_view, labels_view = np.flip(raw_view, i), np.flip(labels_view, i + 1)
        raw_view, labels_view = raw_view.transpose(self.order), labels_view.transpose([0] + [i + 1 for i in self.order])
        if self.matrix is None:
            return raw_view, labels_view
        raw_shape = [self.raw_shape[i] for i in self.order]
        label_shape = [self.label_shape[i] for i in self.order]
        grids: dict = {}  # raw and labels share a plane turn's grid (3 floats per output voxel: worth reusing)
        raw_out = _turn_raw(raw_view, self.matrix, raw_shape, grids)
        if _fixed_axes(self.matrix):  # a batched 2D sample on raw's grid: cheapest for flat samples
            return raw_out, _turn_labels(labels_view, self.matrix, label_shape, grids)
        # a 3D turn: an index gather from the labels as read, the flips and the axis order folded
        # into the map; against sampling a copy of the flipped, swapped labels it is 1.2-1.45x
        # faster with 3 classes and 1.9-4.5x with 48 (benchmarks/RESULTS.md)
        return raw_out, _gather_nearest(labels, self._frame() @ self.matrix, label_shape)

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
    them into float32 with NaN (`cellmap_train/labels.py`). `dtype: float32` keeps NaN, for
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
                 target: BinarizeLabels | None = None):
        self.spatial, self.raw, self.target = spatial, raw, target

    def draw(self, rng: np.random.Generator, raw_shape: Sequence[int], label_shape: Sequence[int]) -> SpatialDraw | None:
        """The sample's spatial choices, made before it is read (None: no spatial transform)."""
        return self.spatial.draw(rng, raw_shape, label_shape) if self.spatial is not None else None

    def apply(self, draw: SpatialDraw | None, raw: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """raw [Z,Y,X] and labels [C,Z,Y,X], read with `draw`'s margins -> the sample: raw float32,
        labels uint8 after `BinarizeLabels`, float32 with NaN = unknown without a target transform."""
        if draw is not None:
            raw, labels = draw.apply(raw, labels)
        raw = self.raw(raw) if self.raw is not None else raw.astype(np.float32)
        labels = self.target(labels) if self.target is not None else labels.astype(np.float32)
        return np.ascontiguousarray(raw), np.ascontiguousarray(labels)

    def __call__(self, raw: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A sample already read, without context (rotated corners unknown)."""
        return self.apply(self.draw(rng, raw.shape, labels.shape[1:]), raw, labels)
