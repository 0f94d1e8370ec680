"""Mutual-exclusion benchmark: what `data.mutual_exclusion=true` costs a sample and what it
gives the loss, against false, on the same crops in one run.

    python benchmarks/mutual_exclusion.py [--samples 24] [--shapes 1x128x128 128x128x128]

The classes are `experiment=train_3D`'s 48; the data (the loader benchmark's: 8 crops of 256^3
voxels) annotates nuc, er and mito, so the other 45 are unknown everywhere, as in most CellMap
crops. For each sample shape, alternated twice, the same samples are read in this process with
the default training transforms: samples per second, and the share of label voxels that are
known (0 or 1, not unknown), the voxels a masked loss learns from.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loader import SCALE, SPATIAL, add_crops_arguments, ensure_crops  # noqa: E402  (the loader benchmark's data)

REPO = Path(__file__).resolve().parents[1]


def measure(root: Path, split: Path, classes: list[str], shape: list[int], samples: int, mutual_exclusion: bool) -> dict:
    from cellmap_train.data import CellMapData
    from cellmap_train.data.transforms import BinarizeLabels, NormalizeRaw, SampleTransforms, SpatialTransform
    from cellmap_train.data.label_transfer import UNKNOWN

    transforms = SampleTransforms(SpatialTransform(**SPATIAL), NormalizeRaw(), BinarizeLabels())
    data = CellMapData(str(root), split, classes, {"shape": shape, "scale": SCALE}, validation_prob=0.25,
                       chunk_cache_mb=256, train_transforms=transforms, mutual_exclusion=mutual_exclusion)
    data.train_set[0]  # opens the crops' arrays
    known = total = 0
    start = time.perf_counter()
    for index in range(1, samples + 1):
        _, labels = data.train_set[index]
        known += int((labels != UNKNOWN).sum())
        total += labels.numel()
    return {"per_s": samples / (time.perf_counter() - start), "known": known / total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_crops_arguments(parser)
    parser.add_argument("--samples", type=int, default=24, help="timed samples per shape, setting and round")
    parser.add_argument("--shapes", nargs="+", default=["1x128x128", "128x128x128"], help="sample shapes, DxHxW")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # 45 classes annotated nowhere: warned about once per data module
    from cellmap_train.data.datasplit import make_datasplit_csv

    root = ensure_crops(args)
    classes = list(OmegaConf.load(REPO / "conf" / "experiment" / "train_3D.yaml").classes)
    print(f"{len(classes)} classes, 3 of them annotated; {args.samples} samples per shape, setting and round "
          f"(best of 2 alternated rounds)")
    print(f"{'shape':12s} {'samples/s off':>14s} {'on':>8s} {'ratio':>6s}   {'known voxels off':>16s} {'on':>7s}")
    with tempfile.TemporaryDirectory() as tmp:
        split = Path(tmp) / "split.csv"
        make_datasplit_csv(classes, False, 0.25, base_path=str(root), csv_path=split)
        for name in args.shapes:
            runs = {False: [], True: []}
            for setting in [False, True] * 2:
                runs[setting].append(measure(root, split, classes, [int(n) for n in name.split("x")], args.samples, setting))
            off, on = (max(r["per_s"] for r in runs[setting]) for setting in (False, True))
            known_off, known_on = (runs[setting][0]["known"] for setting in (False, True))
            print(f"{name:12s} {off:14.2f} {on:8.2f} {on / off:5.2f}x   {known_off:15.1%} {known_on:7.1%}", flush=True)


if __name__ == "__main__":
    main()
