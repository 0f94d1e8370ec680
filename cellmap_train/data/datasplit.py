"""Datasplit CSVs in the challenge's format: which crops train and which validate.

One row per crop, no header, five quoted columns:

    "train","<raw zarr>","recon-1/em/fibsem-uint8","<gt zarr>","recon-1/labels/groundtruth/crop1/[nuc,er]"

The class list in the last column names the requested classes annotated in that crop; the
others are unknown there. Local folders and s3:// URLs are listed through the same fsspec code.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import fsspec
import numpy as np

from cellmap_train.errors import DataError

SEARCH_PATH = "{base_path}/{dataset}/{dataset}.zarr/recon-1/{name}"
RAW_NAME = "em/fibsem-uint8"
CROP_NAME = "labels/groundtruth/{crop}/{label}"
S3_BASE_PATH = "s3://janelia-cosem-datasets"
USAGES = ("train", "validate")


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
    fs, _ = fsspec.core.url_to_fs(search_path.format(dataset="x", name="x"), **(storage_options or {}))
    protocol = search_path.split("://", 1)[0] + "://" if "://" in search_path else ""
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
    return [(raw_urls[url], url, tuple(c for c in classes if c in found[url])) for url in sorted(found, key=_natural_key)]


def _crop_glob(crop: str) -> str:
    crop = str(crop)
    return crop if crop.startswith("crop") or crop == "*" else f"crop{crop}"


def _natural_key(text: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def make_datasplit_csv(classes: Sequence[str] = ("nuc", "mito"), force_all_classes: bool | str = False,
                       validation_prob: float = 0.1, datasets: Sequence[str] = ("*",), crops: Sequence[str] = ("*",),
                       search_path: str = SEARCH_PATH, raw_name: str = RAW_NAME, crop_name: str = CROP_NAME,
                       csv_path: str | os.PathLike = "datasplit.csv", dry_run: bool = False,
                       storage_options: dict | None = None, seed: int = 42, overwrite: bool = False,
                       base_path: str = ".") -> list[CropEntry]:
    """Write (unless `dry_run`) a datasplit CSV of every crop holding any of `classes`.

    `force_all_classes`: True keeps only crops with every class; "train" / "validate" applies
    that rule to one split only. Each crop validates with probability `validation_prob` (fixed
    `seed`); with two or more crops at least one validates and at least one trains.
    An existing CSV is returned as is unless `overwrite=True`.
    """
    csv_path = Path(csv_path)
    if csv_path.exists() and not overwrite and not dry_run:
        return read_datasplit(csv_path)
    search_path = search_path.replace("{base_path}", str(base_path).rstrip("/"))
    rows = find_crops(classes, datasets, crops, search_path, raw_name, crop_name, storage_options)
    rng = np.random.default_rng(seed)
    usages = ["validate" if rng.random() < validation_prob else "train" for _ in rows]
    if len(rows) >= 2 and validation_prob > 0 and "validate" not in usages:
        usages[int(rng.integers(len(rows)))] = "validate"
    if len(rows) >= 2 and "train" not in usages:
        usages[int(rng.integers(len(rows)))] = "train"
    entries = []
    for usage, (raw_url, crop_url, present) in zip(usages, rows):
        if (force_all_classes is True or force_all_classes == usage) and len(present) < len(classes):
            continue
        raw_zarr, raw_path = _split_zarr(raw_url)
        gt_zarr, gt_path = _split_zarr(crop_url)
        entries.append(CropEntry(usage, raw_zarr, raw_path, gt_zarr, gt_path, present))
    if not entries:
        raise DataError(f"{search_path}: no crops with any of the classes {list(classes)}")
    if not dry_run:
        write_datasplit(entries, csv_path)
    return entries


def make_s3_datasplit_csv(classes: Sequence[str] = ("nuc", "mito"), force_all_classes: bool | str = False,
                          validation_prob: float = 0.1, datasets: Sequence[str] = ("*",), crops: Sequence[str] = ("*",),
                          csv_path: str | os.PathLike = "datasplit.csv", dry_run: bool = False,
                          base_path: str = S3_BASE_PATH, storage_options: dict | None = None, **kwargs) -> list[CropEntry]:
    """`make_datasplit_csv` over the public bucket (anonymous by default)."""
    return make_datasplit_csv(classes, force_all_classes, validation_prob, datasets, crops, csv_path=csv_path,
                              dry_run=dry_run, base_path=base_path, storage_options=storage_options or {"anon": True}, **kwargs)


def write_datasplit(entries: Sequence[CropEntry], csv_path: str | os.PathLike) -> None:
    """Write atomically: a crash leaves either the old file or the complete new one."""
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerows(entry.row() for entry in entries)
    tmp = csv_path.with_name(f".{csv_path.name}.tmp-{os.getpid()}")
    tmp.write_text(buffer.getvalue())
    os.replace(tmp, csv_path)


def read_datasplit(csv_path: str | os.PathLike) -> list[CropEntry]:
    csv_path = Path(csv_path)
    if not csv_path.exists():
        raise DataError(f"{csv_path}: datasplit CSV not found")
    entries = []
    with open(csv_path, newline="") as handle:
        for line_no, row in enumerate(csv.reader(handle), start=1):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != 5 or row[0] not in USAGES or not row[4].endswith("]") or "/[" not in row[4]:
                raise DataError(f"{csv_path}:{line_no}: expected 5 columns \"train|validate\",raw zarr,raw path,gt zarr,gt path/[classes]; got {row}")
            gt_path, _, class_list = row[4].rpartition("/[")
            classes = tuple(c.strip() for c in class_list[:-1].split(",") if c.strip())
            entries.append(CropEntry(row[0], row[1], row[2].strip("/"), row[3], gt_path.strip("/"), classes))
    if not entries:
        raise DataError(f"{csv_path}: datasplit CSV has no rows")
    return entries
