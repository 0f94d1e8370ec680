"""What to predict: output grids (voxel size, translation of voxel 0's centre, shape, in nm and
z/y/x) with the labels written on each, and the raw volume they are cut from.

Three sources: the validation crops of a run's datasplit (each class on the grid of its own
annotation, with its ground truth for `evaluate`), a test-crop manifest in the challenge's CSV
format (`crop_name,dataset,class_label,voxel_size,translation,shape`, lists as `[a;b;c]`), or a
box in world coordinates of one dataset.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from cellmap_train.data.datasplit import CropEntry, read_datasplit
from cellmap_train.data.ngff import level_transforms, open_group
from cellmap_train.errors import ConfigError, DataError

MANIFEST_COLUMNS = ("crop_name", "dataset", "class_label", "voxel_size", "translation", "shape")
RAW_PATH = "{base}/{dataset}/{dataset}.zarr/recon-1/em/fibsem-uint8"


@dataclass
class Target:
    """One output grid of one crop and the labels written on it (`<crop>/<label>` arrays)."""

    crop: str  # the store's group name, e.g. crop557
    dataset: str
    raw_url: str
    voxel_size: tuple[float, float, float]
    translation: tuple[float, float, float]
    shape: tuple[int, int, int]
    labels: list[str]
    truth: dict[str, str] = field(default_factory=dict)  # label -> ground-truth multiscale group URL
    source: str = ""  # where it was asked for (a manifest's file:line), for error lines

    @property
    def low(self) -> np.ndarray:
        """World coordinates of the grid's low voxel edges."""
        return np.asarray(self.translation) - np.asarray(self.voxel_size) / 2

    @property
    def high(self) -> np.ndarray:
        return self.low + np.asarray(self.shape) * np.asarray(self.voxel_size)


def crop_group_name(name: str) -> str:
    """The challenge's test volumes are `crop<N>`; a manifest names them by N."""
    name = str(name).strip()
    return name if name.startswith("crop") else f"crop{name}"


def _list(text: str, kind, where: str) -> tuple:
    values = [v for v in str(text).strip().strip("[]()").replace(";", ",").split(",") if v.strip()]
    try:
        parsed = tuple(kind(float(v)) if kind is int else kind(v) for v in values)
    except ValueError:
        raise DataError(f"{where}: {text!r} is not a list of 3 numbers such as [4.0;4.0;4.0]") from None
    if len(parsed) != 3:
        raise DataError(f"{where}: {text!r} must have 3 values (z;y;x)")
    return parsed


def read_manifest(path: str | os.PathLike, base_path: str, classes: Sequence[str]) -> list[Target]:
    """The manifest's rows for `classes` grouped into targets (a crop's labels sharing a grid).
    Each dataset's raw must open: a row whose dataset is not under `base_path` is an error."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: test-crop manifest not found")
    targets: dict[tuple, Target] = {}
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: manifest lacks column(s) {', '.join(missing)} (expected {','.join(MANIFEST_COLUMNS)})")
        for line, row in enumerate(reader, start=2):
            if row["class_label"] not in classes:
                continue
            where = f"{path}:{line}"
            grid = (_list(row["voxel_size"], float, where), _list(row["translation"], float, where),
                    _list(row["shape"], int, where))
            key = (crop_group_name(row["crop_name"]), row["dataset"], *grid)
            target = targets.get(key)
            if target is None:
                raw = RAW_PATH.format(base=str(base_path).rstrip("/"), dataset=row["dataset"])
                target = targets[key] = Target(key[0], row["dataset"], raw, *grid, labels=[], source=where)
            target.labels.append(row["class_label"])
    return list(targets.values())


def check_datasets(targets: Sequence[Target], storage_options: dict | None) -> None:
    """Every target's raw volume opens (one check per dataset), else one line naming the row."""
    seen: set[str] = set()
    for target in targets:
        if target.raw_url in seen:
            continue
        seen.add(target.raw_url)
        try:
            open_group(target.raw_url, storage_options)
        except DataError:
            where = target.source or target.crop
            raise DataError(f"{where}: dataset {target.dataset} not found (no raw at {target.raw_url}); "
                            f"set base_path to the folder holding <dataset>/<dataset>.zarr") from None


def validation_targets(datasplit: str | os.PathLike, classes: Sequence[str], storage_options: dict | None,
                       usage: str = "validate") -> list[Target]:
    """The crops of the datasplit's `usage` rows: each annotated class on the grid of its
    annotation's finest level, classes the crop does not annotate on its first annotated grid."""
    entries = [entry for entry in read_datasplit(datasplit) if entry.usage == usage]
    if not entries:
        raise DataError(f"{datasplit}: no {usage} crops in the datasplit")
    return [target for entry in entries for target in _entry_targets(entry, classes, storage_options)]


def _entry_targets(entry: CropEntry, classes: Sequence[str], storage_options: dict | None) -> list[Target]:
    name = entry.gt_path.rstrip("/").rsplit("/", 1)[-1]
    dataset = Path(entry.raw_zarr.rstrip("/")).stem
    grids: dict[tuple, Target] = {}
    for cls in [c for c in classes if c in entry.classes]:
        url = entry.label_url(cls)
        level_path, scale, translation = level_transforms(open_group(url, storage_options), url)[0]
        shape = tuple(int(n) for n in open_group(url, storage_options)[level_path].shape)
        key = (tuple(scale), tuple(translation), shape)
        if key not in grids:
            grids[key] = Target(crop_group_name(name), dataset, entry.raw_url, *key, labels=[])
        grids[key].labels.append(cls)
        grids[key].truth[cls] = url
    if not grids:
        return []
    first = next(iter(grids.values()))
    first.labels += [c for c in classes if c not in entry.classes]
    return list(grids.values())


def box_target(raw_url: str, name: str, low: Sequence[float], high: Sequence[float],
               voxel_size: Sequence[float], labels: Sequence[str]) -> Target:
    """A box [low, high) nm of a dataset, on a grid of `voxel_size` whose first voxel's low edge is `low`."""
    low_, high_, size = (np.asarray(v, dtype=float) for v in (low, high, voxel_size))
    if low_.shape != (3,) or high_.shape != (3,) or size.shape != (3,) or np.any(high_ <= low_) or np.any(size <= 0):
        raise ConfigError(f"box: low={list(low)} high={list(high)} voxel_size={list(voxel_size)} must be 3 values each "
                          f"(z, y, x nm) with high > low and voxel_size > 0")
    shape = tuple(int(math.ceil((h - l) / s - 1e-6)) for l, h, s in zip(low_, high_, size))
    dataset = Path(raw_url.split(".zarr")[0]).name
    return Target(name, dataset, raw_url, tuple(size.tolist()), tuple((low_ + size / 2).tolist()), shape, list(labels))
