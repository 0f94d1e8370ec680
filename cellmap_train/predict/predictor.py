"""Predict targets into a store: for each target, the model's grid that covers it (its voxel
size; the target's own grid when the voxel sizes agree), sliding-window inference on that grid
slab by slab along z, each slab resampled onto the target's grid (linear; nothing to do on its
own grid), thresholded per class and written. Memory: one slab of the model grid plus the tiles
that reach into it, and the raw those tiles read. A 2D model with `planes=3` runs over z-, y- and
x-slices (planes.py), each blended on its own (a slab per view) and the probabilities averaged."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from cellmap_train.data.ngff import ScaleLevel, open_level
from cellmap_train.data.resample import onto_grid, place, sample_linear
from cellmap_train.engine.pause_hook import pause_point
from cellmap_train.errors import DataError
from cellmap_train.predict.planes import View, views
from cellmap_train.predict.store import PredictionStore, write_slab
from cellmap_train.predict.targets import Target
from cellmap_train.predict.window import SlabBlender, TileGrid, run_tiles


@dataclass
class ModelSpec:
    """What the model reads and writes: classes in output-channel order, its input and output
    tile shapes (voxels, z/y/x; 2D models have z = 1) at one voxel size (nm)."""

    classes: list[str]
    scale: tuple[float, float, float]
    input_shape: tuple[int, int, int]
    output_shape: tuple[int, int, int]

    @property
    def margin(self) -> np.ndarray:
        """Input voxels around the output tile, per side."""
        return (np.asarray(self.input_shape) - np.asarray(self.output_shape)) // 2


@dataclass
class PredictOptions:
    overlap: float = 0.5
    batch_size: int = 8
    threshold: float = 0.5
    thresholds: Mapping[str, float] = field(default_factory=dict)  # per class, over `threshold`
    chunks: tuple[int, int, int] = (64, 64, 64)  # of the output arrays; a slab is one chunk deep
    planes: int = 1  # 3: a 2D model's z-, y- and x-slices, averaged

    def threshold_of(self, label: str) -> float:
        return float(self.thresholds.get(label, self.threshold))


@dataclass
class GridPlan:
    """The model grid under a target: voxel centres at origin + i * scale, `shape` voxels."""

    target: Target
    origin: np.ndarray
    scale: np.ndarray
    shape: tuple[int, int, int]
    exact: bool  # the target's grid itself

    def _position(self, k: float, axis: int = 0) -> float:
        """Output voxel k's centre along `axis`, in model-grid voxels."""
        world = self.target.translation[axis] + k * self.target.voxel_size[axis]
        return (world - self.origin[axis]) / self.scale[axis]

    def z_range(self, a: int, b: int) -> tuple[int, int]:
        """Model-grid planes that output planes [a, b) are interpolated from."""
        if self.exact:
            return a, b
        return int(math.floor(self._position(a) + 1e-9)), min(int(math.floor(self._position(b - 1) + 1e-9)) + 2, self.shape[0])

    def to_output(self, values: np.ndarray, a: int, b: int, g0: int) -> np.ndarray:
        """[C, planes from g0, Y, X] on the model grid -> [C, b - a, y, x] on the target's."""
        if self.exact:
            return values
        out_shape = (b - a, *self.target.shape[1:])
        middle = [a + (b - a - 1) / 2, (out_shape[1] - 1) / 2, (out_shape[2] - 1) / 2]
        centre = np.array([self._position(m, axis) for axis, m in enumerate(middle)]) - np.array([g0, 0, 0])
        step = np.asarray(self.target.voxel_size) / self.scale
        return sample_linear(np.ascontiguousarray(values, dtype=np.float32), np.diag(step), centre, out_shape)


def model_grid(target: Target, scale: Sequence[float], raw: ScaleLevel) -> GridPlan:
    """The target's own grid at the model's voxel size; else a grid of that voxel size over the
    target with one voxel to spare on each side, on the raw's voxels when they are that size
    (tiles then read the raw as it is)."""
    scale_ = np.asarray(scale, dtype=float)
    if np.allclose(scale_, target.voxel_size, rtol=1e-6, atol=1e-9):
        return GridPlan(target, np.asarray(target.translation, float), scale_, tuple(target.shape), True)
    origin = target.low - scale_ / 2
    if np.allclose(raw.scale, scale_, rtol=1e-6, atol=1e-9):
        origin = np.asarray(raw.translation) + np.floor((origin - np.asarray(raw.translation)) / scale_ + 1e-6) * scale_
    last = np.asarray(target.translation) + (np.asarray(target.shape) - 1) * np.asarray(target.voxel_size)
    shape = tuple(int(n) for n in np.floor((last - origin) / scale_ + 1e-9).astype(int) + 2)
    return GridPlan(target, origin, scale_, shape, False)


def check_inside_raw(target: Target, raw: ScaleLevel) -> None:
    """The target lies within its raw volume (give or take a raw voxel)."""
    low, high = raw.world_bounds()
    slack = np.asarray(raw.scale)
    if np.any(target.low < low - slack) or np.any(target.high > high + slack):
        box = lambda a, b: "-".join(str([round(float(v), 1) for v in c]) for c in (a, b))  # noqa: E731
        raise DataError(f"{target.source or target.crop}: crop {target.crop} at {box(target.low, target.high)} nm lies "
                        f"outside the raw volume {raw.path} at {box(low, high)} nm")


def read_region(raw: ScaleLevel, plan: GridPlan, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The raw on model-grid voxels [lo, hi) (may reach past the grid), in the raw's dtype; 0 outside."""
    shape = tuple(int(n) for n in hi - lo)
    centre = plan.origin + (lo + (np.asarray(shape) - 1) / 2) * plan.scale
    where = place(raw.scale, raw.translation, centre, plan.scale, shape)
    values = raw.read(raw.box_low(where.start), where.shape, fill=0)
    return onto_grid(values, where, None, shape, labels=False)


class Predictor:
    """Predicts targets with `runner` (a window.TileRunner: raw tiles -> probabilities)."""

    def __init__(self, spec: ModelSpec, runner: Callable[[np.ndarray], np.ndarray], options: PredictOptions,
                 storage_options: dict | None = None):
        self.spec, self.runner, self.options = spec, runner, options
        self.storage_options = storage_options or {}
        self.views = views(self._timed_runner, spec.input_shape, spec.output_shape, int(options.planes))
        self.seconds_in_model = 0.0

    def tile_count(self, plan: GridPlan) -> int:
        return sum(len(TileGrid(plan.shape, view.output_shape, self.options.overlap).starts()) for view in self.views)

    def open_raw(self, target: Target) -> ScaleLevel:
        """The raw level tiles are read from (the coarsest nowhere coarser than the model's voxels)."""
        return open_level(target.raw_url, self.spec.scale, self.storage_options)

    def _timed_runner(self, raw: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        try:
            return self.runner(raw)
        finally:
            self.seconds_in_model += time.perf_counter() - start

    def predict(self, target: Target, raw: ScaleLevel, plan: GridPlan, store: PredictionStore,
                probabilities: PredictionStore | None = None, progress: Callable[[int], None] | None = None) -> None:
        """Write the target's labels not yet in `store` (float16 probabilities into `probabilities` too)."""
        labels = [label for label in target.labels if not store.has(target.crop, label)]
        if not labels:
            return
        unknown = [label for label in labels if label not in self.spec.classes]
        if unknown:
            raise DataError(f"{target.crop}: the model does not predict {', '.join(unknown)} (its classes: "
                            f"{', '.join(self.spec.classes)})")
        channels = [self.spec.classes.index(label) for label in labels]
        geometry = (target.shape, self.options.chunks, target.voxel_size, target.translation)
        arrays = store.begin(target.crop, labels, *geometry, truth=target.truth)
        soft = probabilities.begin(target.crop, labels, *geometry, dtype="float16") if probabilities else None
        thresholds = np.array([self.options.threshold_of(label) for label in labels], np.float32)[:, None, None, None]
        for a, b, values in self.slabs(raw, plan, channels, progress):
            write_slab(arrays, a, b, (values > thresholds).astype(np.uint8), labels)
            if soft is not None:
                write_slab(soft, a, b, values.astype(np.float16), labels)
            pause_point("predict_slab")  # tests kill a run here: slabs written, the arrays not yet renamed
        crop_attrs = {"dataset": target.dataset, "raw": target.raw_url}
        store.commit(target.crop, labels, target.voxel_size, target.translation, crop_attrs)
        if probabilities is not None:
            probabilities.commit(target.crop, labels, target.voxel_size, target.translation, crop_attrs)

    def slabs(self, raw: ScaleLevel, plan: GridPlan, channels: Sequence[int], progress=None):
        """(a, b, probabilities [C, b - a, y, x]) of output planes [a, b), one chunk deep at a time."""
        depth, channels = int(self.options.chunks[0]), list(channels)
        blenders = [(view, SlabBlender(len(self.spec.classes), TileGrid(plan.shape, view.output_shape, self.options.overlap),
                                       view.weight)) for view in self.views]
        planes = plan.target.shape[0]
        for a in range(0, planes, depth):
            b = min(a + depth, planes)
            g0, g1 = plan.z_range(a, b)
            values = None
            for view, blender in blenders:
                tiles = blender.pending(g1)
                if tiles:
                    self._run(raw, plan, view, blender, tiles, progress)
                part = blender.final(g0, g1)[channels]
                values = part if values is None else values + part
            if len(blenders) > 1:
                values /= len(blenders)
            yield a, b, plan.to_output(values, a, b, g0)
            if b < planes:
                for _, blender in blenders:
                    blender.drop_below(plan.z_range(b, min(b + depth, planes))[0])

    def _run(self, raw: ScaleLevel, plan: GridPlan, view: View, blender: SlabBlender, tiles, progress) -> None:
        starts = np.asarray(tiles)
        margin, size = view.margin, np.asarray(view.input_shape)
        lo, hi = starts.min(axis=0) - margin, starts.max(axis=0) - margin + size
        region = read_region(raw, plan, lo, hi)

        def cut(start) -> np.ndarray:
            first = np.asarray(start) - margin - lo
            return region[tuple(slice(int(f), int(f + n)) for f, n in zip(first, size))]

        run_tiles(blender, tiles, cut, view.runner, self.options.batch_size, progress)
