"""Sliding-window inference on one regular grid (the model's voxel size), with Gaussian-weighted
blending of overlapping tiles, streamed along z so that memory holds one slab of the grid plus
the tiles that reach into it, never a whole volume.

Tiles sit at integer voxel offsets of the grid, `overlap` of a tile apart (default half); each
tile's prediction is weighted by a Gaussian that is highest at its centre (tile borders see the
least context) and the weighted sum is divided by the summed weights. A voxel's value is final
once every tile that covers it has been added: tiles are run in order of their z start, so after
all tiles starting below plane p have run, planes below p are final (`SlabBlender.final`).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch


def gaussian_weight(shape: Sequence[int], sigma_scale: float = 0.125, floor: float = 1e-3) -> np.ndarray:
    """float32 weights of a tile: exp(-d^2 / 2 sigma^2) with sigma = sigma_scale * size per axis,
    1 at the centre, never below `floor` (so a voxel that only a tile's border covers still has a
    value). An axis of size 1 (a 2D model's z) weighs 1."""
    weight = np.ones(tuple(shape), dtype=np.float64)
    for axis, n in enumerate(shape):
        if n == 1:
            continue
        offsets = np.arange(n) - (n - 1) / 2
        profile = np.exp(-(offsets**2) / (2 * (sigma_scale * n) ** 2))
        weight *= profile.reshape([n if a == axis else 1 for a in range(len(shape))])
    return np.maximum(weight / weight.max(), floor).astype(np.float32)


def tile_starts(size: int, tile: int, overlap: float) -> list[int]:
    """Integer starts of tiles of `tile` voxels covering [0, size): `overlap` (0 <= overlap < 1)
    of a tile between neighbours at least, the last tile ending at `size`; one tile centred on
    the range (reaching past both ends) when the range is shorter than a tile."""
    if size <= tile:
        return [(size - tile) // 2]
    stride = max(1, int(math.floor(tile * (1 - overlap) + 1e-9)))
    count = math.ceil((size - tile) / stride) + 1
    # spread evenly, so that no two tiles overlap by more than the others
    return sorted({int(round(i * (size - tile) / (count - 1))) for i in range(count)})


@dataclass(frozen=True)
class TileGrid:
    """The tiles covering a grid of `shape` voxels, ordered by their z start."""

    shape: tuple[int, int, int]
    tile: tuple[int, int, int]
    overlap: float

    def starts(self) -> list[tuple[int, int, int]]:
        overlaps = [0.0 if t == 1 else self.overlap for t in self.tile]  # a 2D model: every plane once
        axes = [tile_starts(n, t, o) for n, t, o in zip(self.shape, self.tile, overlaps)]
        return list(itertools.product(*axes))


class SlabBlender:
    """Weighted sums of tile predictions over the grid's planes [lo, hi), grown as tiles reach
    further in z and dropped once the slabs that read them are written."""

    def __init__(self, channels: int, grid: TileGrid, weight: np.ndarray):
        self.channels, self.grid, self.weight = channels, grid, weight
        self.tiles = grid.starts()
        self.next_tile = 0
        self.lo = 0
        # float64 sums: a weighted mean of equal float32 values then rounds back to exactly that value
        self.sums = np.zeros((channels, 0, *grid.shape[1:]), dtype=np.float64)
        self.weights = np.zeros((0, *grid.shape[1:]), dtype=np.float64)

    def __len__(self) -> int:
        return len(self.tiles)

    def pending(self, z_stop: int) -> list[tuple[int, int, int]]:
        """The tiles not run yet that start below plane `z_stop` (all of them for the last slab)."""
        end = self.next_tile
        while end < len(self.tiles) and (self.tiles[end][0] < z_stop or z_stop >= self.grid.shape[0]):
            end += 1
        taken, self.next_tile = self.tiles[self.next_tile:end], end
        return taken

    def _reach(self, z_stop: int) -> None:
        have = self.lo + self.weights.shape[0]
        if z_stop > have:
            more = z_stop - have
            self.sums = np.concatenate([self.sums, np.zeros((self.channels, more, *self.sums.shape[2:]))], 1)
            self.weights = np.concatenate([self.weights, np.zeros((more, *self.weights.shape[1:]))], 0)

    def add(self, start: Sequence[int], probabilities: np.ndarray) -> None:
        """Add one tile's [C, *tile] prediction at `start`, clipped to the grid."""
        src, dst = [], []
        for axis, (s, t, n) in enumerate(zip(start, self.grid.tile, self.grid.shape)):
            a, b = max(s, 0), min(s + t, n)
            if axis == 0:
                if a < self.lo:
                    raise RuntimeError(f"tile at z {s} reaches planes below {self.lo}, already written")
                self._reach(b)
                dst.append(slice(a - self.lo, b - self.lo))
            else:
                dst.append(slice(a, b))
            src.append(slice(a - s, b - s))
        weight = self.weight[tuple(src)].astype(np.float64)
        self.sums[(slice(None), *dst)] += probabilities[(slice(None), *src)] * weight  # in float64
        self.weights[tuple(dst)] += weight

    def final(self, z0: int, z1: int) -> np.ndarray:
        """The blended [C, z1-z0, Y, X] of planes [z0, z1): every tile covering them must have run."""
        self._reach(z1)
        sums, weights = self.sums[:, z0 - self.lo:z1 - self.lo], self.weights[z0 - self.lo:z1 - self.lo]
        return np.divide(sums, weights, out=np.zeros_like(sums), where=weights > 0).astype(np.float32)

    def drop_below(self, z: int) -> None:
        """Forget planes below `z` (written, and read by no later slab)."""
        cut = min(max(z - self.lo, 0), self.weights.shape[0])
        if cut:
            self.sums, self.weights = self.sums[:, cut:].copy(), self.weights[cut:].copy()
            self.lo += cut


def mirror_axes(spatial_dims: int, mirror: bool) -> list[tuple[int, ...]]:
    """The flips test-time mirroring averages over: every subset of the spatial axes (of a batch
    [N, C, *spatial]), or just the identity."""
    axes = list(range(2, 2 + spatial_dims))
    if not mirror:
        return [()]
    return [combo for k in range(len(axes) + 1) for combo in itertools.combinations(axes, k)]


def autocast_for(device: torch.device, amp: str | None) -> contextlib.AbstractContextManager:
    """`amp`: null/none = full precision, bf16 | fp16, auto = bf16 on CUDA and nothing elsewhere."""
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" else None
    if amp in (None, "none"):
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device.type, dtype=dtype)


class TileRunner:
    """The model on batches of tiles: raw [N, *in_tile] (numpy, after the value transform) ->
    probabilities [N, C, *out_tile] (numpy float32), averaged over the mirrored copies."""

    def __init__(self, model: torch.nn.Module, device: torch.device, spatial_dims: int, mirror: bool = False,
                 amp: str | None = "auto", channels_last: bool = False,
                 prepare: Callable[[np.ndarray], np.ndarray] | None = None):
        self.model, self.device, self.spatial_dims = model.eval().to(device), device, spatial_dims
        self.prepare = prepare  # the run's raw value transform (validation's), on a batch as read
        self.flips = mirror_axes(spatial_dims, mirror)
        self.amp, self.channels_last = amp, channels_last

    @torch.no_grad()
    def __call__(self, raw: np.ndarray) -> np.ndarray:
        raw = self.prepare(raw) if self.prepare is not None else raw
        batch = torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32))
        if self.spatial_dims == 2:
            batch = batch[:, 0]  # [N, 1, H, W] tiles of a 2D model: the z axis is the slice
        batch = batch[:, None].to(self.device, non_blocking=True)
        if self.channels_last:
            from cellmap_train.engine.channels_last import to_channels_last

            batch = to_channels_last(batch)
        total = None
        with autocast_for(self.device, self.amp):
            for flip in self.flips:
                logits = self.model(batch.flip(flip) if flip else batch)
                probabilities = torch.sigmoid(logits.float())
                probabilities = probabilities.flip(flip) if flip else probabilities
                total = probabilities if total is None else total + probabilities
        out = (total / len(self.flips)).cpu().numpy()
        return out[:, :, None] if self.spatial_dims == 2 else out


def batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def run_tiles(blender: SlabBlender, tiles: Sequence[tuple[int, int, int]], cut: Callable[[tuple[int, int, int]], np.ndarray],
              runner: Callable[[np.ndarray], np.ndarray], batch_size: int, done: Callable[[int], None] | None = None) -> None:
    """Predict `tiles` (grid starts) in batches: `cut(start)` is a tile's model input,
    `runner` the model; each prediction is blended in."""
    for chunk in batches(list(tiles), batch_size):
        probabilities = runner(np.stack([cut(start) for start in chunk]))
        if probabilities.shape[2:] != tuple(blender.grid.tile):
            raise ValueError(f"the model returned tiles of {list(probabilities.shape[2:])} voxels for "
                             f"{list(blender.grid.tile)} expected (target_array_info.shape)")
        for start, tile in zip(chunk, probabilities):
            blender.add(start, tile)
        if done is not None:
            done(len(chunk))
