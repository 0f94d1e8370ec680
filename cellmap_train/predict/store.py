"""The prediction store: one zarr v2 group in the challenge's submission layout, `<crop>/<label>`
arrays (uint8 0/1), with OME-NGFF 0.4 metadata and the challenge's own array attributes.

Each crop group's `.zattrs` holds one `multiscales` entry per label (a label array is the single
level of its own multiscale image: scale and translation in nm, axes z/y/x); each array's
`.zattrs` holds `voxel_size`, `translation` and `shape` as the challenge's packer writes them.

An array is written under `<store>.partial/<crop>/<label>` and renamed into the store when its
last slab is written, so a killed run never leaves a half-written array under its final name;
a rerun skips the labels already there and writes the rest.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Sequence

import numcodecs
import numpy as np
import zarr

from cellmap_train.errors import DataError
from cellmap_train.files import atomic_write

STORE_ATTR = "cellmap_train_predict"  # the root's record of what wrote it
COMPRESSOR = numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.BITSHUFFLE)


def ngff_entry(name: str, voxel_size: Sequence[float], translation: Sequence[float]) -> dict:
    return {
        "version": "0.4", "name": name,
        "axes": [{"name": axis, "type": "space", "unit": "nanometer"} for axis in "zyx"],
        "datasets": [{"path": name, "coordinateTransformations": [
            {"type": "scale", "scale": [float(v) for v in voxel_size]},
            {"type": "translation", "translation": [float(v) for v in translation]}]}],
    }


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_json(path: Path, value: dict) -> None:
    with atomic_write(path) as handle:
        handle.write(json.dumps(value, indent=2) + "\n")


class PredictionStore:
    """`<path>` (the store) and `<path>.partial` (arrays being written)."""

    def __init__(self, path: str | os.PathLike, record: dict, overwrite: bool = False):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.record = record
        self._open(overwrite)

    def _open(self, overwrite: bool) -> None:
        root_attrs = self.path / ".zattrs"
        if self.path.exists() and overwrite:
            shutil.rmtree(self.path)
        elif self.path.exists():
            if not (self.path / ".zgroup").is_file():
                raise DataError(f"{self.path}: exists and is not a zarr v2 group; choose another output or remove it")
            before = _json(root_attrs).get(STORE_ATTR, {})
            if before.get("checkpoint") != self.record.get("checkpoint"):
                raise DataError(f"{self.path}: holds predictions of {before.get('checkpoint', 'another model')}, not "
                                f"{self.record.get('checkpoint')}; pass overwrite=true to replace them or choose "
                                f"another output")
        self.path.mkdir(parents=True, exist_ok=True)
        zarr.open_group(str(self.path), mode="a", zarr_format=2)
        attrs = _json(root_attrs)
        attrs[STORE_ATTR] = self.record
        _write_json(root_attrs, attrs)

    def has(self, crop: str, label: str) -> bool:
        return (self.path / crop / label / ".zarray").is_file()

    def begin(self, crop: str, labels: Sequence[str], shape: Sequence[int], chunks: Sequence[int],
              voxel_size: Sequence[float], translation: Sequence[float], dtype: str = "uint8",
              truth: dict[str, str] | None = None) -> dict[str, zarr.Array]:
        """Fresh arrays for `labels` under the partial folder (what a killed run left there is dropped)."""
        arrays = {}
        for label in labels:
            where = self.partial / crop / label
            shutil.rmtree(where, ignore_errors=True)
            where.parent.mkdir(parents=True, exist_ok=True)
            array = zarr.create_array(str(where), shape=tuple(int(n) for n in shape), dtype=dtype, zarr_format=2,
                                      chunks=tuple(int(min(c, n)) for c, n in zip(chunks, shape)),
                                      compressors=COMPRESSOR, fill_value=0)
            array.attrs.update({"voxel_size": [float(v) for v in voxel_size],
                                "translation": [float(v) for v in translation], "shape": [int(n) for n in shape]})
            if truth and label in truth:  # where `evaluate` finds this label's ground truth
                array.attrs["truth"] = truth[label]
            arrays[label] = array
        return arrays

    def commit(self, crop: str, labels: Sequence[str], voxel_size: Sequence[float], translation: Sequence[float],
               crop_attrs: dict | None = None) -> None:
        """Move the finished arrays into the store and list them in the crop's NGFF metadata."""
        group = self.path / crop
        if not (group / ".zgroup").is_file():
            zarr.open_group(str(self.path), mode="a", zarr_format=2).require_group(crop)
        attrs = _json(group / ".zattrs")
        entries = [e for e in attrs.get("multiscales", []) if e.get("name") not in labels]
        attrs["multiscales"] = entries + [ngff_entry(label, voxel_size, translation) for label in labels]
        if crop_attrs:
            attrs.setdefault("cellmap_train", {}).update(crop_attrs)
        _write_json(group / ".zattrs", attrs)  # listed first: a kill before a rename leaves a listed label to redo
        for label in labels:
            os.replace(self.partial / crop / label, group / label)

    def close(self) -> None:
        """Remove the partial folder once nothing is left in it."""
        for folder in sorted(self.partial.glob("*"), reverse=True):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        if self.partial.is_dir() and not any(self.partial.iterdir()):
            self.partial.rmdir()


def write_slab(arrays: dict[str, zarr.Array], z0: int, z1: int, values: np.ndarray, labels: Sequence[str]) -> None:
    """values [len(labels), z1-z0, Y, X] into planes [z0, z1) of each label's array."""
    for label, plane in zip(labels, values):
        arrays[label][z0:z1] = plane
