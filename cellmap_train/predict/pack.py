"""`cellmap-train pack`: zip a prediction store for submission, after checking its arrays
against the test-crop manifest: every array must be a row of it (crop and label) with the row's
shape, voxel size and translation; manifest rows without an array are listed (the challenge
scores them as empty)."""

from __future__ import annotations

import argparse
import os
import sys
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from cellmap_train.errors import DataError, UserError
from cellmap_train.files import atomic_write
from cellmap_train.predict.targets import read_manifest


def store_arrays(store: Path) -> dict[tuple[str, str], dict]:
    """(crop, label) -> the array's .zattrs and .zarray of every `<crop>/<label>` array in the store."""
    import json

    found = {}
    for zarray in sorted(store.glob("*/*/.zarray")):
        crop, label = zarray.parent.parent.name, zarray.parent.name
        attrs = zarray.with_name(".zattrs")
        found[(crop, label)] = {**(json.loads(attrs.read_text()) if attrs.is_file() else {}),
                                "array_shape": json.loads(zarray.read_text())["shape"]}
    return found


def check_against_manifest(store: Path, manifest: Path) -> list[str]:
    """Problems that make the store unfit to submit (an error each); returns the manifest rows it lacks."""
    arrays = store_arrays(store)
    expected = {}
    for target in read_manifest(manifest, "", classes=_all_labels(manifest)):
        for label in target.labels:
            expected[(target.crop, label)] = target
    for (crop, label), attrs in arrays.items():
        target = expected.get((crop, label))
        if target is None:
            raise DataError(f"{store}/{crop}/{label}: not in the manifest {manifest} (no row for crop {crop}, label {label})")
        for what, have, want in (("shape", attrs["array_shape"], target.shape),
                                 ("voxel_size", attrs.get("voxel_size"), target.voxel_size),
                                 ("translation", attrs.get("translation"), target.translation)):
            if have is None or len(have) != 3 or not np.allclose(have, want, rtol=0, atol=1e-6):
                raise DataError(f"{store}/{crop}/{label}: {what} {have} but the manifest says {list(want)}")
    return [f"{crop}/{label}" for crop, label in expected if (crop, label) not in arrays]


def _all_labels(manifest: Path) -> list[str]:
    import csv

    with open(manifest, newline="") as handle:
        return sorted({row.get("class_label", "") for row in csv.DictReader(handle)})


def zip_store(store: Path, out: Path) -> int:
    """Zip the store's files under `<store name>/` (stored uncompressed: chunks are compressed
    already); written to a temporary name and renamed. Returns the number of files."""
    files = sorted(p for p in store.rglob("*") if p.is_file())
    with atomic_write(out, "wb") as handle:
        with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for path in files:
                archive.write(path, Path(store.name) / path.relative_to(store))
    return len(files)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cellmap-train pack", description="Zip a prediction store for the challenge, "
                                "checking its crops and labels against the test-crop manifest.")
    p.add_argument("store", help="the predictions (a zarr v2 store written by predict)")
    p.add_argument("--manifest", default=None, help="test_crop_manifest.csv to check names, shapes and grids against")
    p.add_argument("-o", "--output", default=None, help="the zip file (default: <store stem>.zip beside it)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    store = Path(args.store)
    out = Path(args.output) if args.output else store.with_name(f"{store.stem}.zip")
    try:
        if not (store / ".zgroup").is_file():
            raise DataError(f"{store}: not a zarr v2 store (no .zgroup)")
        if (partial := store.with_name(store.name + ".partial")).is_dir() and any(partial.rglob(".zarray")):
            raise DataError(f"{store}: a prediction into it has not finished ({partial} holds arrays being written); "
                            f"rerun predict with the same output first")
        arrays = store_arrays(store)
        if not arrays:
            raise DataError(f"{store}: holds no <crop>/<label> arrays")
        missing = check_against_manifest(store, Path(args.manifest)) if args.manifest else []
        files = zip_store(store, out)
    except (UserError, OSError) as err:
        print(f"cellmap-train pack: error: {err}", file=sys.stderr)
        return 1
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        print(f"{len(missing)} manifest labels have no prediction (scored as empty): {shown}")
    checked = " (checked against the manifest)" if args.manifest else ""
    print(f"Packed {len(arrays)} arrays of {len({c for c, _ in arrays})} crops{checked}, {files} files, "
          f"{os.path.getsize(out) / 1e6:.1f} MB -> {out}")
    return 0
