"""Rotation benchmark: what reading a rotated sample's context costs, and what it saves.

    python benchmarks/rotation.py [--samples 200] [--samples-3d 10] [--data-dir DIR]

A rotated sample's corners come from outside the box it would fill unrotated. By default the
sample is cut at its size and turned, so the corners are blank (raw 0, labels unknown); with
`transforms.train.spatial.read_context=true` the datasets draw the rotation first and read that
margin too (`SpatialDraw`). For each sample shape, side by side in one run and in one process
(each chunk cache warmed first): ms per training sample with and without the context, and the
share of label voxels left unknown (the rest of it is samples reaching past their crop's edge,
which no read can fill). Data: the loader benchmark's (8 crops of
256^3 voxels in a 288^3 volume), generated once into --data-dir.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loader import CLASSES, SCALE, add_crops_arguments, ensure_crops  # noqa: E402  (the same data as the loader benchmark)

CASES = [  # (sample shape, turned about)
    ([1, 128, 128], "z"),
    ([128, 128, 128], "z"),
    ([128, 128, 128], "zyx"),
]


def measure(root: Path, shape, rotate, samples: int) -> dict:
    from cellmap_train.data import CellMapData
    from cellmap_train.data.transforms import BinarizeLabels, NormalizeRaw, SampleTransforms, SpatialTransform
    from cellmap_train.data.label_transfer import UNKNOWN

    sets = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, read_context in (("context", True), ("blank", False)):  # the same crops, centres and draws
            spatial = SpatialTransform({"x": 0.5, "y": 0.5}, ["x", "y"], rotate, read_context=read_context)
            transforms = SampleTransforms(spatial, NormalizeRaw(), BinarizeLabels())
            sets[name] = CellMapData(search_path=str(root), datasplit_path=Path(tmp) / "split.csv", classes=CLASSES,
                                     input_array_info={"shape": shape, "scale": SCALE}, batch_size=1, validation_prob=0.25,
                                     dataloader_kwargs={"num_workers": 0}, train_transforms=transforms,
                                     val_transforms=transforms, chunk_cache_mb=2048).train_set
        for dataset in sets.values():  # warm each one's chunk cache
            for i in range(samples):
                dataset[i]
        result = {}
        for name in [*sets] * 2:  # alternated, twice
            start, unknown = time.perf_counter(), []
            for i in range(samples):
                unknown.append((sets[name][i][1].numpy() == UNKNOWN).mean())
            result.setdefault(name, []).append((time.perf_counter() - start) / samples * 1000)
            result[f"{name} unknown"] = float(np.mean(unknown))
    return {key: min(value) if isinstance(value, list) else value for key, value in result.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_crops_arguments(parser)
    parser.add_argument("--samples", type=int, default=200, help="timed samples per 2D case")
    parser.add_argument("--samples-3d", type=int, default=10, help="timed samples per 3D case")
    args = parser.parse_args()
    size = args.crop_size
    root = ensure_crops(args)
    print(f"ms per training sample (best of 2, chunk cache warm) and unknown label voxels, data {root}")
    print(f"{'sample':32s} {'with context':>13s} {'blank corners':>14s} {'time ratio':>11s}   unknown: with / blank")
    for shape, axes in CASES:
        shape = [min(n, size // 2) for n in shape]  # a smaller --crop-size: smaller samples
        name = f"{'x'.join(map(str, shape))}, turned about {','.join(axes)}"
        rotate = {axis: [-180, 180] for axis in axes}
        r = measure(root, shape, rotate, args.samples if shape[0] == 1 else args.samples_3d)
        print(f"{name:32s} {r['context']:10.1f} ms {r['blank']:11.1f} ms {r['context'] / r['blank']:10.2f}x"
              f"   {r['context unknown']:.1%} / {r['blank unknown']:.1%}")


if __name__ == "__main__":
    main()
