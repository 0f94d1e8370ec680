"""A sample's grid (the requested voxel size and shape, centred on a world point) against the
grid of the level it is read from, and the one interpolation that maps the level's voxels onto
it with the sample's flips, axis order and rotation folded in.

Coordinates: a level's voxel i has its centre at translation + i * scale (OME-NGFF); the
sample's voxel k (of n along an axis) sits (k - (n - 1) / 2) requested voxels from its centre.
So output voxel k reads the level at `centre + M @ (k - c_out)` in the read box's voxels, with
M = diag(step) @ (flips, order, rotation) and step = requested / level voxel size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

EXACT = 1e-3  # a level grid this close (in its voxels) to the sample's is the sample's: read as is


@dataclass(frozen=True)
class Placement:
    """Which voxels of a level a sample reads, and where the sample's grid lies in them."""

    start: tuple[int, ...]  # first level voxel of the box read
    shape: tuple[int, ...]  # level voxels read (outside the array: fill)
    centre: np.ndarray  # the sample grid's centre, in the read box's voxel coordinates
    step: np.ndarray  # level voxels per requested voxel, per axis
    exact: bool  # the box read is the sample's grid itself: nothing to interpolate


def place(level_scale: Sequence[float], level_translation: Sequence[float], centre_world: Sequence[float],
          request_scale: Sequence[float], shape: Sequence[int]) -> Placement:
    """Where a sample of `shape` requested voxels centred at `centre_world` (nm) lies in a level.
    Not exact: the box covers every voxel a linear or nearest interpolation of the sample (and of
    any turn of it within `shape`) reads, one voxel beyond on each side."""
    scale, shape_ = np.asarray(level_scale, float), np.asarray(shape, int)
    step = np.asarray(request_scale, float) / scale
    centre = (np.asarray(centre_world, float) - np.asarray(level_translation, float)) / scale
    first = centre - (shape_ - 1) / 2  # level coordinate of the sample's first voxel, on an exact grid
    if np.allclose(step, 1, rtol=0, atol=1e-6) and np.all(np.abs(first - np.rint(first)) < EXACT):
        start = np.rint(first).astype(int)
        return Placement(tuple(start.tolist()), tuple(shape_.tolist()), (shape_ - 1) / 2, np.ones(3), True)
    half = step * (shape_ - 1) / 2
    start = np.floor(centre - half - 1e-6).astype(int)
    stop = np.floor(centre + half + 1e-6).astype(int) + 2  # the upper neighbour of the last voxel
    return Placement(tuple(start.tolist()), tuple((stop - start).tolist()), centre - start, step, False)


def onto_grid(values: np.ndarray, where: Placement, draw, out_shape: Sequence[int], labels: bool,
              grids: dict | None = None) -> np.ndarray:
    """An array read at `where` (raw [*box] or labels [C, *box]) on the sample's grid, with the
    spatial `draw` (a transforms.SpatialDraw, or None) applied: by the draw's own turn where the
    read is the grid itself, else in one interpolation that does both (labels nearest, raw linear)."""
    if where.exact:
        if draw is None:
            return values
        return draw.apply_labels(values, grids) if labels else draw.apply_raw(values, grids)
    matrix = np.diag(where.step) @ (draw.read_map() if draw is not None else np.eye(3))
    if labels:
        return sample_nearest(values, matrix, where.centre, out_shape)
    out = sample_linear(values[None], matrix, where.centre, out_shape, grids)[0]  # float32 made in its first pass
    return to_dtype_of(out, values.dtype)


def sample_nearest(values: np.ndarray, matrix: np.ndarray, centre_in: np.ndarray,
                   out_shape: Sequence[int]) -> np.ndarray:
    """values [C, *in] -> float32 [C, *out_shape]: output voxel k takes the input voxel nearest to
    centre_in + matrix @ (k - c_out), NaN where that lies outside the input. One index per output
    voxel, shared by the channels; an input axis that depends on few output axes keeps its index
    1-long along the others (a gather, not an interpolation)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    in_shape, d = values.shape[1:], len(out_shape)
    centre_out = (np.asarray(out_shape) - 1) / 2
    steps = [(np.arange(n) - c).reshape([n if a == j else 1 for a in range(d)])
             for j, (n, c) in enumerate(zip(out_shape, centre_out))]
    flat, outside, stride = None, None, 1
    for i in reversed(range(d)):  # flat index into the C-ordered input, last axis first
        # only the output axes this input axis depends on are spelled out; the rest broadcast
        index = sum((matrix[i, j] * steps[j] for j in range(d) if matrix[i, j] != 0), float(centre_in[i]))
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
        np.copyto(out, np.nan, where=np.broadcast_to(outside, out.shape[1:]))  # broadcast, not spelled out per channel
    return out.reshape(values.shape[0], *out_shape)


def labels_onto_grid(stored: np.ndarray | None, low: Sequence[int], where: Placement, draw, out_shape: Sequence[int],
                     decoders: Sequence, out: np.ndarray | None = None) -> np.ndarray:
    """float32 labels [C, *out_shape] (NaN = unknown) on a sample's grid from a resampled read:
    `stored` [C, *part] holds the values as stored of the part of the box `where` from box voxel
    `low` on that lies inside the level (None: the box misses it), `decoders` one `decode(values,
    out=)` per class. The nearest voxels are gathered before they are decoded, so decoding and
    marking the outside unknown cost the sample's voxels, not the box's (~6x as many on a
    [5.24, 4, 4] level at 8 nm). Same values as sample_nearest of the decoded, NaN-padded box."""
    out = np.empty((len(decoders), *out_shape), np.float32) if out is None else out
    if stored is None:
        out.fill(np.nan)
        return out
    matrix = np.diag(where.step) @ (draw.read_map() if draw is not None else np.eye(3))
    gathered, outside = gather_nearest(stored, matrix, where.centre, out_shape, low)
    for values, decode, slot in zip(gathered, decoders, out):
        decode(values, out=slot)
    if outside is not None:
        np.copyto(out, np.nan, where=np.broadcast_to(outside, out.shape[1:]))
    return out


def nearest_span(where: Placement, draw, out_shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per axis, the first and (exclusive) last box voxel a nearest gather of the sample can take,
    whichever way rounding goes at a tie: a resampled read of labels needs no more (a 2D sample
    one plane of the two its box holds; a 3D one none of the linear interpolation's upper margin)."""
    matrix = np.diag(where.step) @ (draw.read_map() if draw is not None else np.eye(3))
    reach = np.abs(matrix) @ ((np.asarray(out_shape) - 1) / 2)
    first = np.ceil(where.centre - reach - 0.5 - 1e-6).astype(int)
    return np.maximum(first, 0), np.minimum(np.floor(where.centre + reach + 0.5 + 1e-6).astype(int) + 1, where.shape)


def gather_nearest(values: np.ndarray, matrix: np.ndarray, centre_in: np.ndarray, out_shape: Sequence[int],
                   low: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """values [C, *in] (any dtype), the part of a box from box voxel `low` on -> ([C, *out_shape]
    in that dtype, outside): output voxel k takes the voxel nearest to centre_in + matrix @
    (k - c_out) (box coordinates, rounded as sample_nearest rounds); `outside` marks (broadcastable
    to out_shape) those whose voxel lies outside `values` (their value is arbitrary), None if none.
    An input axis fed by one output axis alone (z under a turn about z; every axis under flips and
    transposes) is gathered plane by plane: the plane's index is small and stays in cache."""
    in_shape = values.shape[1:]
    index, outside = nearest_indices(matrix, centre_in, out_shape, in_shape, low)
    strides = [int(np.prod(in_shape[i + 1:])) for i in range(len(in_shape))]
    flat_values = values.reshape(len(values), -1)
    pair = plane_pair(matrix)
    if pair is None:
        flat = sum(ix * s for ix, s in zip(index, strides))
        return flat_values.take(np.broadcast_to(flat, out_shape).ravel(), axis=1).reshape(len(values), *out_shape), outside
    i, j = pair
    plane = [1 if a == j else n for a, n in enumerate(out_shape)]
    rest = sum(ix * s for a, (ix, s) in enumerate(zip(index, strides)) if a != i)
    rest = np.ascontiguousarray(np.broadcast_to(rest, plane)).ravel()
    out = np.empty((len(values), *out_shape), values.dtype)
    planes = np.moveaxis(out, j + 1, 0)  # [n_j, C, *rest]: a view of out
    for k, source in enumerate(index[i].ravel()):
        planes[k] = flat_values.take(rest + int(source) * strides[i], axis=1).reshape(planes.shape[1:])
    return out, outside


def nearest_indices(matrix: np.ndarray, centre_in: np.ndarray, out_shape: Sequence[int], in_shape: Sequence[int],
                    low: Sequence[int] | None = None) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Per input axis, the index (intp, clipped into the input) of each output voxel's nearest
    input voxel, spelled out only along the output axes it depends on; and where that lies outside
    the input (broadcastable to out_shape; None: nowhere). The input starts at box voxel `low`."""
    d = len(out_shape)
    centre_out = (np.asarray(out_shape) - 1) / 2
    steps = [(np.arange(n) - c).reshape([n if a == j else 1 for a in range(d)])
             for j, (n, c) in enumerate(zip(out_shape, centre_out))]
    indices, outside = [], None
    for i in range(d):
        # rounded in box coordinates, then moved (rint's ties to even would differ on the part's)
        index = np.rint(sum((matrix[i, j] * steps[j] for j in range(d) if matrix[i, j] != 0), float(centre_in[i])))
        index -= low[i] if low is not None else 0
        if index.min() < 0 or index.max() > in_shape[i] - 1:
            beyond = (index < 0) | (index > in_shape[i] - 1)
            outside = beyond if outside is None else outside | beyond
            index = np.clip(index, 0, in_shape[i] - 1)
        indices.append(index.astype(np.intp))
    return indices, outside


def plane_pair(matrix: np.ndarray) -> tuple[int, int] | None:
    """(input axis, output axis) of the outermost input axis that one output axis alone feeds
    and that feeds nothing else; None for a turn that mixes every axis."""
    nonzero = matrix != 0
    for i in range(len(matrix)):
        columns = np.flatnonzero(nonzero[i])
        if len(columns) == 1 and nonzero[:, columns[0]].sum() == 1:
            return i, int(columns[0])
    return None


def separable_axes(matrix: np.ndarray) -> list[int]:
    """The axes the map leaves unmixed (its row and column hold only the diagonal): each can be
    resampled on its own, and the rest turned as a batch of planes."""
    off = np.abs(matrix - np.diag(np.diag(matrix)))
    return [i for i in range(len(matrix)) if off[i].max() < 1e-12 and off[:, i].max() < 1e-12]


def sample_linear(values: np.ndarray, matrix: np.ndarray, centre_in: np.ndarray, out_shape: Sequence[int],
                  grids: dict | None = None) -> np.ndarray:
    """values [C, *in] (float32, or as stored) -> float32 [C, *out_shape] by linear interpolation
    at centre_in + matrix @ (k - c_out), zeros from outside. Axes the map leaves unmixed are
    interpolated one at a time (separable: the same numbers as trilinear; the first pass reads the
    stored values, so no full-box float copy is made), the turned ones by grid_sample, batched
    over an unmixed axis when there is one: before that axis is interpolated, or after it where
    that is less work (`_turn_first`)."""
    centre_in = np.asarray(centre_in, float).copy()
    centre_out = (np.asarray(out_shape) - 1) / 2
    separable = separable_axes(matrix)
    turned = [i for i in range(3) if i not in separable]
    # the one unmixed axis of a turn in a plane, interpolated after the turn where that is less work
    later = (separable[0] if len(turned) == 2 and _turn_first(values.shape[1:], out_shape, turned, separable[0],
                                                              values.dtype != np.float32) else None)
    for i in separable:
        if i != later:
            values = _linear_1d(values, i + 1, _axis_coords(centre_in, matrix, centre_out, out_shape, i))
            centre_in[i] = centre_out[i]
    values = values.astype(np.float32, copy=False)  # left as stored by whole-voxel passes (slices) only
    if not turned:
        return values
    in_shape = values.shape[1:]
    shift = (2 * centre_in + 1) / np.asarray(in_shape) - 1  # the input centre, in grid_sample's units
    if len(turned) == 3:
        grid = sampling_grid(out_shape, in_shape, matrix, shift, grids)
        return F.grid_sample(torch.from_numpy(np.ascontiguousarray(values))[None], grid, mode="bilinear",
                             padding_mode="zeros", align_corners=False)[0].numpy()
    axis = separable[0]  # planes stacked along it
    batch = np.ascontiguousarray(np.moveaxis(values, axis + 1, 0))  # [N, C, *plane]
    plane = np.ix_(turned, turned)
    grid = sampling_grid([out_shape[i] for i in turned], [in_shape[i] for i in turned], matrix[plane], shift[turned], grids)
    out = F.grid_sample(torch.from_numpy(batch), grid.expand(batch.shape[0], *grid.shape[1:]), mode="bilinear",
                        padding_mode="zeros", align_corners=False).numpy()
    out = np.moveaxis(out, 0, axis + 1)
    if later is None:
        return out
    return _linear_1d(out, axis + 1, _axis_coords(centre_in, matrix, centre_out, out_shape, axis))


def _axis_coords(centre_in: np.ndarray, matrix: np.ndarray, centre_out: np.ndarray, out_shape: Sequence[int],
                 i: int) -> np.ndarray:
    """Input coordinates along unmixed axis i of the output voxels along it."""
    return centre_in[i] + matrix[i, i] * (np.arange(out_shape[i]) - centre_out[i])


def _turn_first(in_shape: Sequence[int], out_shape: Sequence[int], turned: Sequence[int], axis: int,
                converts: bool = False) -> bool:
    """Whether turning the planes before interpolating along the unmixed `axis` is less work: it
    turns every input plane (not only the output's) but interpolates along the axis at the output
    plane size (not the input's). A resampled 128^3 sample read at [5.24, 4, 4] for 8 nm turns
    ~195 planes of 256^2 into 128^2, then interpolates 128 of those, rather than interpolating 128
    planes of 256^2 first (33 against 45 ms, one thread). A 2D sample (two planes in, one out)
    keeps the axis first: batched grid_sample has its own overhead there. Cost of an output voxel:
    a grid_sample's taken as 4 times a 1D step's (about 3 measured on CPU torch 2.13). `converts`:
    the values are stored integers, which turning first must copy whole into float32 for
    grid_sample (a step per input voxel), while the axis pass reads them as they are: so raw
    stored as uint8 (every CellMap raw) takes the axis first (that 128^3 sample: 25 against 62 ms
    of CPU with one thread, the box's float32 copy included)."""
    plane_in = float(np.prod([in_shape[i] for i in turned]))
    plane_out = float(np.prod([out_shape[i] for i in turned]))
    n_in, n_out = in_shape[axis], out_shape[axis]
    axis_first = n_out * plane_in + 4 * n_out * plane_out
    turn_first = 4 * n_in * plane_out + n_out * plane_out + (n_in * plane_in if converts else 0)
    return turn_first < axis_first


def _linear_1d(values: np.ndarray, axis: int, coords: np.ndarray) -> np.ndarray:
    """values interpolated along `axis` at fractional `coords` into float32 (from any dtype);
    zeros beyond the ends. Whole-voxel coordinates are a slice (or a take), nothing interpolated
    (the dtype kept)."""
    n = values.shape[axis]
    whole = np.rint(coords)
    if np.all(np.abs(coords - whole) < EXACT):
        index = whole.astype(int)
        if index[0] >= 0 and index[-1] < n and np.all(np.diff(index) == 1):
            return values[(slice(None),) * axis + (slice(index[0], index[-1] + 1),)]
        coords = whole
    low = np.floor(coords).astype(int)
    weight = (coords - low).astype(np.float32)
    if axis == 1:
        return _linear_planes(values, low, weight)
    shape = [1] * values.ndim
    shape[axis] = len(coords)
    out = None
    for index, w in ((low, 1 - weight), (low + 1, weight)):
        inside = (index >= 0) & (index < n)
        w = np.where(inside, w, 0).astype(np.float32).reshape(shape)
        part = np.take(values, np.clip(index, 0, n - 1), axis=axis)
        # in place where float32 already: a second full-size buffer costs its page faults
        part = np.multiply(part, w, out=part if part.dtype == np.float32 else None, dtype=np.float32)
        out = part if out is None else np.add(out, part, out=out)
    return out


def _linear_planes(values: np.ndarray, low: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """values [C, N, ...] interpolated along N (contiguous planes) into float32, output plane k
    from planes low[k] and low[k] + 1 weighted 1 - weight[k] and weight[k] (a plane beyond the
    ends contributes nothing): each plane read once as stored, no full-box float copy. The same
    float32 arithmetic as the general pass."""
    n = values.shape[1]
    out = np.empty((values.shape[0], len(low), *values.shape[2:]), np.float32)
    part = np.empty(values.shape[2:], np.float32)
    for c in range(values.shape[0]):
        for k, (z, w) in enumerate(zip(low, weight)):
            terms = [(int(src), wk) for src, wk in ((z, 1 - w), (z + 1, w)) if 0 <= src < n]
            if not terms:
                out[c, k] = 0
                continue
            np.multiply(values[c, terms[0][0]], terms[0][1], out=out[c, k], dtype=np.float32)
            for src, wk in terms[1:]:
                out[c, k] += np.multiply(values[c, src], wk, out=part, dtype=np.float32)
    return out


def sampling_grid(out_size: Sequence[int], in_size: Sequence[int], matrix: np.ndarray, shift: np.ndarray,
          grids: dict | None) -> torch.Tensor:
    """grid_sample's grid [1, *out_size, d]: output voxel k (normalised (2k + 1) / n - 1 with
    align_corners=False) reads the input at shift + theta @ that, theta being `matrix` in
    normalised units. `grids` keeps the ones made for one sample (raw and labels may share)."""
    key = (tuple(out_size), tuple(in_size), tuple(np.round(shift, 9)), matrix.tobytes())
    if grids is not None and key in grids:
        return grids[key]
    d = len(out_size)
    half_out, half_in = np.asarray(out_size, dtype=float) / 2, np.asarray(in_size, dtype=float) / 2
    theta = matrix * half_out[None, :] / half_in[:, None]
    axes = [((2 * np.arange(n) + 1) / n - 1).reshape([n if j == k else 1 for k in range(d)]) for j, n in enumerate(out_size)]
    grid = np.empty((1, *out_size, d), dtype=np.float32)
    component = np.empty(tuple(out_size))  # float64, rounded once into the grid
    for i in range(d):  # grid_sample wants x, y(, z) order: input axis i is grid component d-1-i
        component.fill(shift[i])
        for j in range(d):
            if theta[i, j] != 0:
                component += theta[i, j] * axes[j]  # in place: no full-size temporaries
        grid[0, ..., d - 1 - i] = component
    grid = torch.from_numpy(grid)
    if grids is not None:
        grids[key] = grid
    return grid


def to_dtype_of(values: np.ndarray, like: np.dtype) -> np.ndarray:
    """Interpolated float32 raw back in the dtype it was read as (integers rounded and clipped),
    so that the value transforms scale it by that dtype's range."""
    if not np.issubdtype(like, np.integer):
        return values.astype(like, copy=False)
    info = np.iinfo(like)
    return np.clip(np.rint(values), info.min, info.max).astype(like)
