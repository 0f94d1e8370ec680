"""Intensity augmentation benchmark: what `transforms=intensity` costs per 2D training sample.

    python benchmarks/intensity.py [--samples 300] [--data-dir DIR]

Side by side in one run and one process, on the loader benchmark's data (8 crops of 256^3,
chunk cache warm) with 1x128x128 samples: ms per training sample (read, spatial transforms,
value transforms) with the default transforms, with the `intensity` preset's probabilities, and
with every intensity step on (p=1); then the value transforms alone on a sample already in
memory. Each figure is the best of two alternated passes over the same samples.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loader import CLASSES, SCALE, SPATIAL, add_crops_arguments, ensure_crops  # noqa: E402  (the loader benchmark's data)

SHAPE = [1, 128, 128]
CASES = ("default", "intensity preset", "intensity p=1")


def intensity(all_on: bool):
    """The preset's steps, as conf/transforms/intensity.yaml builds them (p=1 for each if asked)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    preset = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "transforms" / "intensity.yaml")
    if all_on:
        for step in ("gamma", "contrast", "blur", "noise"):
            preset.train.intensity[step].p = 1.0
    return instantiate(preset.train.intensity)


def transforms_of(case: str):
    from cellmap_train.data.transforms import BinarizeLabels, NormalizeRaw, SampleTransforms, SpatialTransform

    steps = None if case == "default" else intensity(case.endswith("p=1"))
    return SampleTransforms(SpatialTransform(**SPATIAL), NormalizeRaw(), BinarizeLabels(), intensity=steps)


def best_of_two(timed: dict) -> dict:
    """ms per call of each case, alternated twice, the better pass kept."""
    result = {}
    for name in [*timed] * 2:
        count, run = timed[name]
        start = time.perf_counter()
        run()
        result.setdefault(name, []).append((time.perf_counter() - start) / count * 1000)
    return {name: min(times) for name, times in result.items()}


def per_sample(root: Path, samples: int) -> dict:
    from cellmap_train.data import CellMapData

    with tempfile.TemporaryDirectory() as tmp:
        sets = {case: CellMapData(search_path=str(root), datasplit_path=Path(tmp) / "split.csv", classes=CLASSES,
                                  input_array_info={"shape": SHAPE, "scale": SCALE}, batch_size=1, validation_prob=0.25,
                                  dataloader_kwargs={"num_workers": 0}, train_transforms=transforms_of(case),
                                  val_transforms=transforms_of("default"), chunk_cache_mb=2048).train_set
                for case in CASES}
        for dataset in sets.values():  # warm each one's chunk cache
            for i in range(samples):
                dataset[i]
        return best_of_two({case: (samples, lambda d=dataset: [d[i] for i in range(samples)])
                            for case, dataset in sets.items()})


def values_only(samples: int) -> dict:
    raw = np.random.default_rng(0).integers(0, 256, SHAPE, dtype=np.uint8)
    labels = np.zeros((len(CLASSES), *SHAPE), np.uint8)
    timed = {}
    for case in CASES:
        transforms = transforms_of(case)
        timed[case] = (samples, lambda t=transforms: [t.values(raw, labels, np.random.default_rng([1, i]))
                                                      for i in range(samples)])
    return best_of_two(timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_crops_arguments(parser)
    parser.add_argument("--samples", type=int, default=300, help="timed samples per case")
    args = parser.parse_args()
    root = ensure_crops(args)
    rows = {"training sample (read + all transforms)": per_sample(root, args.samples),
            "value transforms alone (in memory)": values_only(args.samples)}
    print(f"ms per 1x128x128 sample (best of 2 alternated passes, {args.samples} samples, chunk cache warm), data {root}")
    print(f"{'':42s}" + "".join(f"{case:>18s}" for case in CASES) + f"{'ratio preset':>14s}{'ratio p=1':>11s}")
    for name, r in rows.items():
        base = r["default"]
        print(f"{name:42s}" + "".join(f"{r[case]:15.3f} ms" for case in CASES)
              + f"{r['intensity preset'] / base:13.2f}x{r['intensity p=1'] / base:10.2f}x")


if __name__ == "__main__":
    main()
