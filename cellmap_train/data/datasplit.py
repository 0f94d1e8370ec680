"""Datasplit CSVs in the challenge's format: which crops train and which validate.

One row per crop, no header, five quoted columns:

    "train","<raw zarr>","recon-1/em/fibsem-uint8","<gt zarr>","recon-1/labels/groundtruth/crop1/[nuc,er]"

The class list in the last column names the requested classes annotated in that crop; the
others are unknown there. Local folders and s3:// URLs are listed through the same fsspec code.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from cellmap_train.data.ngff import level_transforms, map_concurrently, open_group, reachable, url_filesystem
from cellmap_train.errors import ConfigError, DataError
from cellmap_train.files import atomic_write

SEARCH_PATH = "{base_path}/{dataset}/{dataset}.zarr/recon-1/{name}"
RAW_NAME = "em/fibsem-uint8"
CROP_NAME = "labels/groundtruth/{crop}/{label}"
S3_BASE_PATH = "s3://janelia-cosem-datasets"
USAGES = ("train", "validate")
# label groups of a crop that are not classes: `all` is the annotators' dense map, every class of
# the crop in one array keyed by class id; read as a class it would be "any structure"
NOT_CLASSES = frozenset({"all"})
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CropEntry:
    usage: str
    raw_zarr: str
    raw_path: str
    gt_zarr: str
    gt_path: str  # recon-1/labels/groundtruth/cropN (without the class list)
    classes: tuple[str, ...]

    @property
    def raw_url(self) -> str:
        return f"{self.raw_zarr.rstrip('/')}/{self.raw_path}"

    def label_url(self, cls: str) -> str:
        return f"{self.gt_zarr.rstrip('/')}/{self.gt_path}/{cls}"

    @property
    def name(self) -> str:
        return f"{Path(self.gt_zarr.rstrip('/')).stem}/{self.gt_path.rsplit('/', 1)[-1]}"

    def row(self) -> list[str]:
        return [self.usage, self.raw_zarr, self.raw_path, self.gt_zarr, f"{self.gt_path}/[{','.join(self.classes)}]"]


def _split_zarr(path: str) -> tuple[str, str]:
    """'/a/b/ds.zarr/recon-1/x' -> ('/a/b/ds.zarr', 'recon-1/x')."""
    head, sep, tail = path.partition(".zarr/")
    if not sep:
        raise DataError(f"{path}: not inside a .zarr container")
    return head + ".zarr", tail.strip("/")


def find_crops(classes: Sequence[str], datasets: Sequence[str], crops: Sequence[str], search_path: str,
               raw_name: str, crop_name: str, storage_options: dict | None = None) -> list[tuple[str, str, tuple[str, ...]]]:
    """(raw url, crop url, annotated requested classes) for every crop that has at least one class."""
    fs, _ = url_filesystem(search_path.format(dataset="x", name="x"), storage_options)
    protocol = search_path.split("://", 1)[0] + "://" if "://" in search_path else ""
    with reachable(search_path):
        found: dict[str, set[str]] = {}
        raw_urls: dict[str, str] = {}
        for dataset in datasets:
            for crop in crops:
                for cls in classes:
                    pattern = search_path.format(dataset=dataset, name=crop_name.format(crop=_crop_glob(crop), label=cls))
                    for match in fs.glob(pattern.removeprefix(protocol)):
                        crop_url = protocol + match.rsplit("/", 1)[0]
                        found.setdefault(crop_url, set()).add(match.rsplit("/", 1)[-1])
                        zarr_root, _ = _split_zarr(crop_url)
                        raw_urls[crop_url] = search_path.format(dataset=Path(zarr_root).stem, name=raw_name)
        raw_exists = {raw: fs.exists(raw.removeprefix(protocol)) for raw in set(raw_urls.values())}
    for raw in sorted(r for r, ok in raw_exists.items() if not ok):
        log.warning("skipping the crops of %s: no raw data there", raw)
    return [(raw_urls[url], url, tuple(c for c in classes if c in found[url])) for url in sorted(found, key=_natural_key)
            if raw_exists[raw_urls[url]]]


def _crop_glob(crop: str) -> str:
    crop = str(crop)
    return crop if crop.startswith("crop") or crop == "*" else f"crop{crop}"


def _natural_key(text: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def assign_usages(present: Sequence[Sequence[str]], classes: Sequence[str], force_all_classes: bool | str,
                  validation_prob: float, seed: int) -> list[str | None]:
    """'train' / 'validate' / None (dropped) per crop, given the classes each crop holds.

    Each crop validates with probability `validation_prob` (generator seeded by `seed`).
    `force_all_classes`: True drops crops lacking a class; "train" / "validate" moves a crop
    lacking a class that was drawn for that split to the other one. With two or more crops,
    at least one validates and one trains, chosen among crops the rule allows there.
    """
    if force_all_classes not in (True, False, "train", "validate"):
        raise DataError(f"force_all_classes={force_all_classes!r}: must be true, false, 'train' or 'validate'")
    complete = [set(classes) <= set(p) for p in present]
    rng = np.random.default_rng(seed)
    usages: list[str | None] = ["validate" if rng.random() < validation_prob else "train" for _ in present]
    other = {"train": "validate", "validate": "train"}
    for i, usage in enumerate(usages):
        if not complete[i] and force_all_classes is True:
            usages[i] = None
        elif not complete[i] and force_all_classes == usage:
            usages[i] = other[usage]

    def allowed(i: int, usage: str) -> bool:
        return usages[i] is not None and (complete[i] or force_all_classes not in (True, usage))

    kept = [i for i, u in enumerate(usages) if u is not None]
    for usage in ("validate", "train"):
        if len(kept) >= 2 and usage not in usages and (usage == "train" or validation_prob > 0):
            candidates = [i for i in kept if allowed(i, usage) and usages.count(usages[i]) > 1]
            if candidates:
                usages[candidates[int(rng.integers(len(candidates)))]] = usage
    return usages


def make_datasplit_csv(classes: Sequence[str] = ("nuc", "mito"), force_all_classes: bool | str = False,
                       validation_prob: float = 0.1, datasets: Sequence[str] = ("*",), crops: Sequence[str] = ("*",),
                       search_path: str = SEARCH_PATH, raw_name: str = RAW_NAME, crop_name: str = CROP_NAME,
                       csv_path: str | os.PathLike = "datasplit.csv", dry_run: bool = False,
                       storage_options: dict | None = None, seed: int = 42, overwrite: bool = False,
                       base_path: str = ".", scale: float | Sequence[float] | None = None,
                       threads: int = 16) -> list[CropEntry]:
    """Write (unless `dry_run`) a datasplit CSV of every crop holding any of `classes`.

    See `assign_usages` for the split rules. `scale` keeps a class in a crop only if its
    finest level is at least that fine (the challenge's `filter_by_scale`), `threads` crops
    looked at once (on S3 each class of each crop is two requests).
    An existing CSV is returned as is unless `overwrite=True`.
    """
    csv_path = Path(csv_path)
    if csv_path.exists() and not overwrite and not dry_run:
        return read_datasplit(csv_path)
    if reason := not_a_class(classes):
        raise ConfigError(f"classes: {reason}")
    if "{base_path}" in search_path and "://" not in str(base_path) and not Path(base_path).is_dir():
        raise DataError(f"{base_path}: no such folder to list crops from")
    search_path = search_path.replace("{base_path}", str(base_path).rstrip("/"))
    rows = find_crops(classes, datasets, crops, search_path, raw_name, crop_name, storage_options)
    if scale is not None:
        fine = map_concurrently(lambda row: _fine_enough(row[1], row[2], scale, storage_options), rows, threads)
        rows = [(raw, crop, present) for (raw, crop, _), present in zip(rows, fine) if present]
    usages = assign_usages([present for _, _, present in rows], classes, force_all_classes, validation_prob, seed)
    entries = []
    for usage, (raw_url, crop_url, present) in zip(usages, rows):
        if usage is None:
            continue
        raw_zarr, raw_path = _split_zarr(raw_url)
        gt_zarr, gt_path = _split_zarr(crop_url)
        entries.append(CropEntry(usage, raw_zarr, raw_path, gt_zarr, gt_path, present))
    if not entries:
        shown = list(classes) if len(classes) <= 8 else f"{list(classes)[:8]} and {len(classes) - 8} more"
        raise DataError(f"{search_path}: no crops with any of the classes {shown}")
    if not dry_run:
        write_datasplit(entries, csv_path)
    return entries


def not_a_class(classes: Sequence[str]) -> str:
    """Why the first of `classes` that is a label group but not a class cannot be asked for, or ''."""
    name = next((cls for cls in classes if cls in NOT_CLASSES), None)
    return "" if name is None else (f"{name} is a crop's class-id map (every class of the crop in one array, "
                                    f"keyed by id), not a class; name the classes themselves")


def _fine_enough(crop_url: str, present: Sequence[str], scale, storage_options) -> tuple[str, ...]:
    """The classes of the crop whose s0 voxel size is <= `scale` on every axis."""

    wanted = np.broadcast_to(np.asarray(scale, dtype=float), (3,))
    keep = []
    for cls in present:
        url = f"{crop_url}/{cls}"
        finest = level_transforms(open_group(url, storage_options), url)[0][1]
        if np.all(np.asarray(finest) <= wanted + 1e-9):
            keep.append(cls)
    return tuple(keep)


def make_s3_datasplit_csv(classes: Sequence[str] = ("nuc", "mito"), force_all_classes: bool | str = False,
                          validation_prob: float = 0.1, datasets: Sequence[str] = ("*",), crops: Sequence[str] = ("*",),
                          csv_path: str | os.PathLike = "datasplit.csv", dry_run: bool = False,
                          base_path: str = S3_BASE_PATH, storage_options: dict | None = None, **kwargs) -> list[CropEntry]:
    """`make_datasplit_csv` over the public bucket (anonymous by default)."""
    return make_datasplit_csv(classes, force_all_classes, validation_prob, datasets, crops, csv_path=csv_path,
                              dry_run=dry_run, base_path=base_path, storage_options=storage_options or {"anon": True}, **kwargs)


def label_names_on_disk(entries: Sequence[CropEntry], storage_options: dict | None = None, limit: int = 50) -> set[str]:
    """The label groups the ground-truth folders of (at most `limit` of) `entries` hold, whatever
    classes the datasplit lists: what a user can ask for there. One listing per crop."""
    def groups(entry: CropEntry) -> set[str]:
        url = f"{entry.gt_zarr.rstrip('/')}/{entry.gt_path}"
        fs, path = url_filesystem(url, storage_options)
        with reachable(url):
            try:
                listing = fs.ls(path, detail=True)
            except FileNotFoundError:
                return set()
        names = {item["name"].rstrip("/").rsplit("/", 1)[-1] for item in listing if item.get("type") == "directory"}
        return names - NOT_CLASSES

    return set().union(*map_concurrently(groups, list(entries)[:limit], threads=16))


def write_datasplit(entries: Sequence[CropEntry], csv_path: str | os.PathLike) -> None:
    """Write atomically: a crash leaves either the old file or the complete new one."""
    with atomic_write(csv_path, "w", newline="") as handle:
        csv.writer(handle, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(entry.row() for entry in entries)


def read_datasplit(csv_path: str | os.PathLike, allow_overlap: bool = False) -> list[CropEntry]:
    """The rows of a datasplit CSV. A crop listed twice for one split is kept once (one warning);
    a crop listed for both splits is refused unless `allow_overlap` (validation would score
    training data, and "best" would be chosen on it)."""
    csv_path = Path(csv_path)
    if not csv_path.exists():
        raise DataError(f"{csv_path}: datasplit CSV not found")
    entries, lines = [], []
    with open(csv_path, newline="") as handle:
        for line_no, row in enumerate(csv.reader(handle), start=1):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != 5 or row[0] not in USAGES or not row[4].endswith("]") or "/[" not in row[4]:
                raise DataError(f"{csv_path}:{line_no}: expected 5 columns \"train|validate\",raw zarr,raw path,gt zarr,gt path/[classes]; got {row}")
            gt_path, _, class_list = row[4].rpartition("/[")
            classes = tuple(c.strip() for c in class_list[:-1].split(",") if c.strip())
            if reason := not_a_class(classes):
                raise DataError(f"{csv_path}:{line_no}: {reason}")
            entries.append(CropEntry(row[0], row[1], row[2].strip("/"), row[3], gt_path.strip("/"), classes))
            lines.append(line_no)
    if not entries:
        raise DataError(f"{csv_path}: datasplit CSV has no rows")
    return check_rows(entries, lines, csv_path, allow_overlap)


def _crop_key(entry: CropEntry) -> tuple[str, str]:
    """Which crop a row names, however its paths are spelt (trailing or doubled slashes)."""
    return os.path.normpath(entry.gt_zarr.rstrip("/")), os.path.normpath(entry.gt_path)


def check_rows(entries: Sequence[CropEntry], lines: Sequence[int], csv_path: Path,
               allow_overlap: bool = False) -> list[CropEntry]:
    """Drop rows repeating a crop within one split (they would double its share of the draws),
    with one warning; refuse a crop in both splits (naming both rows) unless `allow_overlap`."""
    first: dict[tuple[str, str, str], int] = {}  # (usage, crop) -> index of its first row
    kept, dropped = [], []
    for index, (entry, line) in enumerate(zip(entries, lines)):
        key = (entry.usage, *_crop_key(entry))
        if key in first:
            dropped.append(f"{line} (as {lines[first[key]]})")
            continue
        first[key] = index
        kept.append(entry)
    if dropped:
        log.warning("%s: %d duplicate row%s dropped, each repeating an earlier row's crop and split: line %s",
                    csv_path, len(dropped), "s" * (len(dropped) > 1), ", ".join(dropped[:5]) +
                    (f" and {len(dropped) - 5} more" if len(dropped) > 5 else ""))
    if not allow_overlap:
        for (usage, *crop), index in first.items():
            other = first.get(("validate", *crop)) if usage == "train" else None
            if other is not None:
                raise DataError(f"{csv_path}:{lines[index]} (train) and {csv_path}:{lines[other]} (validate) list the "
                                f"same crop {entries[index].name}: validation would score training data; remove one "
                                f"row, or data.allow_split_overlap=true to train on it anyway")
    return kept
