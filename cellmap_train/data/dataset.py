"""Training and validation samples cut from CellMap crops by world coordinates.

A sample is `raw [1, *S]` (float32) and `labels [C, *S]` where S is the requested shape, with
a leading 1 dropped for 2D (`[1,H,W]` -> `H,W`). Labels are uint8 with UNKNOWN (255) for voxels
not annotated once binarized (`cellmap_train/data/label_transfer.py`), float32 with NaN without a target
transform. Stores are opened lazily in each process, so DataLoader workers never share file
handles or S3 sessions.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from itertools import zip_longest
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from cellmap_train.data.array_info import ArrayInfo
from cellmap_train.data.chunks import ChunkCache
from cellmap_train.data.class_relations import infer_negatives
from cellmap_train.data.datasplit import CropEntry
from cellmap_train.data.ngff import ScaleLevel, coarsest_level, fetch_together, map_concurrently, open_level
from cellmap_train.data.resample import Placement, labels_onto_grid, nearest_span, onto_grid, place
from cellmap_train.data.transforms import SampleTransforms, SpatialDraw
from cellmap_train.errors import DataError


class Crop:
    """The raw level and per-class label levels of one annotated crop, opened on first use: for
    each array the level `ngff.choose_level` picks for the requested voxel size, whatever levels
    exist; samples are resampled from it (`resample.py`). A worker process reads the levels its
    parent opened (each chunk reader makes its own filesystem there); levels read through zarr
    are reopened in each process instead."""

    def __init__(self, entry: CropEntry, classes: Sequence[str], input_info: ArrayInfo, target_info: ArrayInfo,
                 storage_options: dict | None, cache: ChunkCache | None = None,
                 exclusive: Sequence[tuple[int, ...]] | None = None):
        self.entry, self.classes = entry, list(classes)
        self.exclusive = exclusive  # per class, the classes it never shares a voxel with (data.mutual_exclusion)
        self.cache = cache
        self.input_info, self.target_info = input_info, target_info
        self.storage_options = storage_options or {}
        self._raw: ScaleLevel | None = None
        self._labels: dict[str, ScaleLevel | None] | None = None
        self._groups: list[tuple[list[int], list[ScaleLevel]]] = []  # classes read on one grid, with their levels
        self._snap_level: ScaleLevel | None = None
        self._pid: int | None = None
        self._volumes: tuple[np.ndarray, np.ndarray] | None = None  # class_volumes(), once read

    def __getstate__(self):
        state = {**self.__dict__, "_pid": None}
        return state if self._portable() else {**state, "_raw": None, "_labels": None, "_groups": [], "_snap_level": None}

    def _portable(self) -> bool:
        """Whether the opened levels can be read as they are in another process."""
        levels = [self._raw, *(self._labels or {}).values()]
        return self._raw is not None and all(level.reader is not None for level in levels if level is not None)

    def open(self) -> "Crop":
        """Open the raw's and each annotated class's level for the requested voxel sizes."""
        if self._raw is None or (self._pid != os.getpid() and not self._portable()):
            raw = open_level(self.entry.raw_url, self.input_info.scale, self.storage_options, self.cache)
            self._labels = {cls: open_level(self.entry.label_url(cls), self.target_info.scale, self.storage_options,
                                            self.cache) if cls in self.entry.classes else None for cls in self.classes}
            self._groups = level_groups(self._labels)
            # a label level at the target's voxel size: samples snap to its grid (read as is)
            self._snap_level = next((level for level in self._labels.values() if level is not None
                                     and np.allclose(level.scale, self.target_info.scale)), None)
            self._raw = raw
            # the levels themselves, not `known`: that opens again a crop read through zarr (pid not yet set)
            check_inside(raw, [level for level in self._labels.values() if level is not None], self.entry)
        self._pid = os.getpid()
        return self

    @property
    def known(self) -> list[ScaleLevel]:
        return [level for level in self.open()._labels.values() if level is not None]

    @property
    def raw_level(self) -> ScaleLevel:
        return self.open()._raw

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """World box covered by the annotation (union of its class arrays)."""
        lows, highs = zip(*(level.world_bounds() for level in self.known))
        return np.min(lows, axis=0), np.max(highs, axis=0)

    def labelled_volume(self) -> float:
        low, high = self.bounds()
        return float(np.prod(high - low)) * len(self.known)

    def class_volumes(self) -> tuple[np.ndarray, np.ndarray]:
        """Per requested class, the volume (nm^3) of its foreground and of its known voxels here
        (0 where not annotated), counted on the coarsest level so the whole array fits in memory.
        Read once: the rare-class weights and `loss.pos_weight=auto` both ask."""
        if self._volumes is None:
            foreground, known = np.zeros(len(self.classes)), np.zeros(len(self.classes))
            for c, cls in enumerate(self.classes):
                if cls in self.entry.classes:
                    level = coarsest_level(self.entry.label_url(cls), self.storage_options)
                    labels = level.encoding.decode(np.asarray(level.array[...]))
                    voxel = float(np.prod(level.scale))
                    is_known = ~np.isnan(labels)
                    known[c], foreground[c] = is_known.sum() * voxel, (labels[is_known] > 0).sum() * voxel
            self._volumes = foreground, known
        return self._volumes

    def foreground_fractions(self) -> np.ndarray:
        """Per requested class, the foreground fraction of its known voxels (0 where not annotated)."""
        foreground, known = self.class_volumes()
        return np.divide(foreground, known, out=np.zeros_like(known), where=known > 0)

    def boxes(self, centre: np.ndarray, draw: SpatialDraw | None = None) -> SampleBoxes:
        """Where the sample centred at world point `centre` (nm) lies in each level it reads, with
        the margin of context the spatial `draw` turns into the sample (a rotation's corners).
        Snapped to a label level at the target's voxel size when there is one, so that its
        targets are exact voxels, read without interpolation."""
        tinfo, iinfo = self.target_info, self.input_info
        mid = np.asarray(centre, dtype=float)
        exact = self._snap_level
        if exact is not None:
            grid = np.asarray(exact.translation) - np.asarray(exact.scale) / 2
            mid = grid + np.round((mid - tinfo.extent / 2 - grid) / tinfo.scale) * tinfo.scale + tinfo.extent / 2
        raw_margin, label_margin = (draw.raw_margin, draw.label_margin) if draw is not None else (np.zeros(3, int),) * 2
        raw_shape, label_shape = np.asarray(iinfo.shape) + 2 * raw_margin, np.asarray(tinfo.shape) + 2 * label_margin
        return SampleBoxes(place(self._raw.scale, self._raw.translation, mid, iinfo.scale, raw_shape),
                           tuple(place(levels[0].scale, levels[0].translation, mid, tinfo.scale, label_shape)
                                 for _, levels in self._groups))

    def array_reads(self, boxes: SampleBoxes) -> list[tuple[ScaleLevel, np.ndarray, tuple[int, ...]]]:
        """(level, world_low, shape) of every array the sample reads: for ngff.fetch_together."""
        reads = [(self._raw, self._raw.box_low(boxes.raw.start), boxes.raw.shape)]
        for (_, levels), where in zip(self._groups, boxes.labels):
            reads += [(level, level.box_low(where.start), where.shape) for level in levels]
        return reads

    def read(self, centre: np.ndarray, draw: SpatialDraw | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Raw and labels (NaN where unknown) of the sample at `centre` on the requested grid,
        `draw`'s flips, axis order and rotation applied; before any value transform."""
        return self.read_boxes(self.open().boxes(centre, draw), draw)

    def read_boxes(self, boxes: SampleBoxes, draw: SpatialDraw | None = None,
                   fetched: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The sample at `boxes` (`read`). Its arrays' chunks are fetched in one round of
        requests, unless `fetched` holds them already."""
        self.open()
        if fetched is None:
            fetched = fetch_together(self.array_reads(boxes))
        raw_shape, label_shape = draw.out_shapes() if draw is not None else (self.input_info.shape, self.target_info.shape)
        grids: dict = {}  # raw and labels may share a sampling grid
        raw = self._raw.read(self._raw.box_low(boxes.raw.start), boxes.raw.shape, fill=0, fetched=fetched)
        raw = onto_grid(raw, boxes.raw, draw, raw_shape, False, grids)
        labels = np.empty((len(self.classes), *label_shape), dtype=np.float32)
        labels[[c for c, level in enumerate(self._labels.values()) if level is None]] = np.nan  # not annotated
        for (indices, levels), where in zip(self._groups, boxes.labels):
            if not where.exact:
                if indices == list(range(indices[0], indices[0] + len(indices))):  # the usual case: in place
                    resampled_labels(levels, where, fetched, draw, label_shape, labels[indices[0]:indices[0] + len(indices)])
                else:
                    labels[indices] = resampled_labels(levels, where, fetched, draw, label_shape)
                continue
            low = levels[0].box_low(where.start)
            read = np.empty((len(levels), *where.shape), dtype=np.float32)  # each class read into its slot
            for level, slot in zip(levels, read):
                level.read_labels(low, where.shape, fetched, out=slot)
            labels[indices] = onto_grid(read, where, draw, label_shape, True, grids)
        if self.exclusive:
            infer_negatives(labels, self.exclusive, [level is not None for level in self._labels.values()])
        return raw, labels

    def draw(self, transforms: SampleTransforms | None, rng: np.random.Generator) -> SpatialDraw | None:
        """A sample's spatial choices: drawn before it is read, which must take the margin they need."""
        return transforms.draw(rng, self.input_info.shape, self.target_info.shape) if transforms is not None else None

    def sample(self, centre: np.ndarray, transforms: SampleTransforms | None, rng: np.random.Generator):
        """The transformed sample at `centre`, its spatial choices drawn from `rng`."""
        draw = self.draw(transforms, rng)
        return with_values(transforms, self.read(centre, draw), rng)


def level_groups(labels: Mapping[str, ScaleLevel | None]) -> list[tuple[list[int], list[ScaleLevel]]]:
    """The annotated classes (by index) grouped by their level's grid: each group is read as one
    box and interpolated once (most crops annotate every class at one voxel size)."""
    groups: dict[tuple, tuple[list[int], list[ScaleLevel]]] = {}
    for c, level in enumerate(labels.values()):
        if level is not None:
            key = (tuple(level.scale), tuple(level.translation), tuple(level.shape))
            indices, levels = groups.setdefault(key, ([], []))
            indices.append(c)
            levels.append(level)
    return list(groups.values())


def resampled_labels(levels: Sequence[ScaleLevel], where: Placement, fetched: Mapping[str, Any],
                     draw: SpatialDraw | None, out_shape: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
    """float32 labels [C, *out_shape] of classes read on one grid that the sample is resampled
    from: only the part of the box that is inside their level and that the nearest voxels can come
    from is read, as stored (no float copy, no padding), and `resample.labels_onto_grid` gathers
    the nearest voxels before decoding them."""
    first, stop = nearest_span(where, draw, out_shape)
    part = None if np.any(stop <= first) else levels[0].inside(levels[0].box_low(np.add(where.start, first)), stop - first)
    stored, low = None, None
    if part is not None:
        low, src = part
        low = low + first
        dtype = np.result_type(*(level.array.dtype for level in levels))
        stored = np.empty((len(levels), *(s.stop - s.start for s in src)), dtype=dtype)
        for level, slot in zip(levels, stored):  # each class read into its slot
            level.read_stored(src, fetched, out=slot)
    return labels_onto_grid(stored, low, where, draw, out_shape, [level.encoding.decode for level in levels], out)


def check_inside(raw: ScaleLevel, labels: Sequence[ScaleLevel], entry: CropEntry) -> None:
    """A crop's annotation lies inside its raw volume (give or take a raw voxel): otherwise its
    translation, or the datasplit's pairing of raw and crop, is wrong."""
    raw_low, raw_high = raw.world_bounds()
    for level in labels:
        low, high = level.world_bounds()
        if np.any(low < raw_low - raw.scale) or np.any(high > raw_high + raw.scale):
            raise DataError(f"{level.path}: crop at {_nm_box(low, high)} nm lies outside its raw volume "
                            f"{raw.path} at {_nm_box(raw_low, raw_high)} nm; check the translations in their .zattrs")


def _nm_box(low, high) -> str:
    return "-".join(str([round(float(v), 1) for v in corner]) for corner in (low, high))


@dataclass(frozen=True)
class SampleBoxes:
    """Where a sample lies in the levels it reads: raw, and each group of label classes."""

    raw: Placement
    labels: tuple[Placement, ...]


def read_batch(picks: Sequence[tuple[Crop, np.ndarray, np.random.Generator]], transforms: SampleTransforms | None,
               squeeze_z: bool, augment: bool = True) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The samples (crop, centre, rng) of one batch, each as `Crop.sample` makes it, with the
    chunks of all of them fetched in one round of requests: on S3 a batch costs one round trip
    instead of one per sample, one after the other. `augment` False: no random value transform
    (validation tiles are fixed)."""
    draws = [crop.draw(transforms, rng) for crop, _, rng in picks]
    boxes = [crop.open().boxes(centre, draw) for (crop, centre, _), draw in zip(picks, draws)]
    fetched = fetch_together([read for (crop, _, _), where in zip(picks, boxes) for read in crop.array_reads(where)])
    return [to_tensors(*with_values(transforms, crop.read_boxes(where, draw, fetched), rng if augment else None), squeeze_z)
            for (crop, _, rng), draw, where in zip(picks, draws, boxes)]


def with_values(transforms: SampleTransforms | None, sample: tuple[np.ndarray, np.ndarray],
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return sample if transforms is None else transforms.values(*sample, rng=rng)


def to_tensors(raw: np.ndarray, labels: np.ndarray, squeeze_z: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if squeeze_z:
        raw, labels = raw[0], labels[:, 0]
    return torch.from_numpy(np.ascontiguousarray(raw[None])), torch.from_numpy(np.ascontiguousarray(labels))


def crop_probabilities(crops: Sequence[Crop], weighted: bool, rare_class_weight: float, threads: int = 1) -> np.ndarray:
    """How often each crop is drawn: by labelled volume (`weighted`) or uniformly, blended
    with a share `rare_class_weight` that gives every class the same total mass, spread over
    crops by how much of that class they hold (rare classes get seen as often as common ones)."""
    base = np.array([c.labelled_volume() for c in crops]) if weighted else np.ones(len(crops))
    base = base / base.sum()
    if rare_class_weight <= 0:
        return base
    fractions = map_concurrently(Crop.foreground_fractions, crops, threads)  # each reads the crop's coarsest levels
    mass = np.stack(fractions) * base[:, None]  # [crops, classes]
    totals = mass.sum(axis=0)
    present = totals > 0
    if not present.any():
        return base
    per_class = (mass[:, present] / totals[present]).mean(axis=1)
    mixed = (1 - rare_class_weight) * base + rare_class_weight * per_class
    return mixed / mixed.sum()


def positive_weights(crops: Sequence[Crop], threads: int = 1) -> np.ndarray:
    """Per class, its background over its foreground volume in `crops` (the challenge's
    weight_loss, BCE's pos_weight): a class with 1 % foreground gets 99. 1 for a class without
    foreground here, whose positive term is then never used."""
    foreground, known = (np.sum(volumes, axis=0) for volumes in zip(*map_concurrently(Crop.class_volumes, crops, threads)))
    return np.divide(known - foreground, foreground, out=np.ones_like(known), where=foreground > 0)


class RandomCropDataset(Dataset):
    """Sample `i` is a random crop drawn from generator seed (seed, i): the same sample whatever
    worker or epoch asks, which is what makes resumed runs exactly equal to uninterrupted ones."""

    def __init__(self, crops: Sequence[Crop], transforms: SampleTransforms | None, seed: int, weighted: bool = True,
                 rare_class_weight: float = 0.0, threads: int = 1):
        if not crops:
            raise DataError("no training crops in the datasplit")
        if not 0 <= rare_class_weight <= 1:
            raise DataError(f"rare_class_weight={rare_class_weight}: must be in [0, 1]")
        self.crops, self.transforms, self.seed = list(crops), transforms, int(seed)
        self.probabilities = crop_probabilities(self.crops, weighted, float(rare_class_weight), threads)
        self.bounds = [c.bounds() for c in self.crops]
        self.squeeze_z = self.crops[0].input_info.is_2d

    def __len__(self) -> int:
        return 2**62

    def pick(self, index: int) -> tuple[Crop, np.ndarray, np.random.Generator]:
        """Sample `index`'s crop and centre, and the generator its spatial choices come from."""
        rng = np.random.default_rng([self.seed, int(index)])
        k = int(rng.choice(len(self.crops), p=self.probabilities))
        low, high = self.bounds[k]
        return self.crops[k], rng.uniform(low, high), rng

    def __getitem__(self, index: int):
        return read_batch([self.pick(index)], self.transforms, self.squeeze_z)[0]

    def __getitems__(self, indices: Sequence[int]):  # a DataLoader asks for a whole batch at once
        return read_batch([self.pick(i) for i in indices], self.transforms, self.squeeze_z)


def tile_starts(low: float, high: float, tile: float) -> list[float]:
    """Tile origins covering [low, high) evenly; one centred tile when the range is smaller."""
    extent = high - low
    if extent <= tile:
        return [low + (extent - tile) / 2]
    count = math.ceil(extent / tile - 1e-9)
    step = (extent - tile) / (count - 1)
    return [low + i * step for i in range(count)]


def crop_tiles(crop: Crop) -> list[np.ndarray]:
    """Centres of a grid of tiles covering the crop (2D: every slice)."""
    extent = crop.target_info.extent
    low, high = crop.bounds()
    axes = [tile_starts(lo, hi, ext) for lo, hi, ext in zip(low, high, extent)]
    return [np.array([z, y, x]) + extent / 2 for z in axes[0] for y in axes[1] for x in axes[2]]


class ValidationTileDataset(Dataset):
    """A fixed grid of tiles over every validation crop, taken round-robin across crops so
    that a batch or time limit still sees every crop."""

    def __init__(self, crops: Sequence[Crop], transforms: SampleTransforms | None):
        self.crops, self.transforms = list(crops), transforms
        per_crop = [[(k, centre) for centre in crop_tiles(crop)] for k, crop in enumerate(self.crops)]
        self.tiles: list[tuple[int, np.ndarray]] = [t for row in zip_longest(*per_crop) for t in row if t is not None]
        self.squeeze_z = bool(self.crops) and self.crops[0].input_info.is_2d

    def __len__(self) -> int:
        return len(self.tiles)

    def pick(self, index: int) -> tuple[Crop, np.ndarray, np.random.Generator]:
        k, centre = self.tiles[index]
        return self.crops[k], centre, np.random.default_rng(index)

    def __getitem__(self, index: int):
        return read_batch([self.pick(index)], self.transforms, self.squeeze_z, augment=False)[0]

    def __getitems__(self, indices: Sequence[int]):
        return read_batch([self.pick(i) for i in indices], self.transforms, self.squeeze_z, augment=False)


class CountingSampler(Sampler[int]):
    """Training sample indices forever, from the stream's `start`-th sample of this rank on:
    the loop decides when an epoch ends. With several ranks, micro-batch b of rank r holds the
    samples (b * world_size + r) * batch_size + j, so ranks never draw the same sample and a
    single process (world_size 1) sees start, start+1, ..."""

    def __init__(self, start: int = 0, batch_size: int = 1, rank: int = 0, world_size: int = 1):
        self.start, self.batch_size, self.rank, self.world_size = int(start), int(batch_size), int(rank), int(world_size)

    def __iter__(self) -> Iterator[int]:
        position = self.start
        while True:
            batch, j = divmod(position, self.batch_size)
            yield (batch * self.world_size + self.rank) * self.batch_size + j
            position += 1


class ShardedBatches:
    """Index lists of a fixed dataset's batches for one rank: global batches rank, rank + world_size,
    ... of the single-process order, so the ranks together see exactly what one process would
    (a DataLoader `batch_sampler`)."""

    def __init__(self, length: int, batch_size: int, rank: int = 0, world_size: int = 1):
        self.length, self.batch_size, self.rank, self.world_size = int(length), int(batch_size), int(rank), int(world_size)
        self.batches = -(-self.length // self.batch_size)  # all ranks together

    def __iter__(self) -> Iterator[list[int]]:
        for b in range(self.rank, self.batches, self.world_size):
            yield list(range(b * self.batch_size, min((b + 1) * self.batch_size, self.length)))

    def __len__(self) -> int:
        return len(range(self.rank, self.batches, self.world_size))
