"""Label transport benchmark: uint8 labels (0, 1, 255 = unknown) against float32 with NaN, the
way they travelled before, through the same loader in one run.

    python benchmarks/labels.py [--shape 64 64 64] [--batch 2] [--workers 2] [--batches 12]

The classes are `experiment=train_3D`'s 48; the data (the loader benchmark's: 8 crops of 256^3
voxels) annotates 3 of them, so the other 45 are unknown everywhere, as in most CellMap crops.
For each format, alternated twice: bytes per label batch, batches per second into the training
process (DataLoader workers, then `DeviceBatches` on the CPU, which turns uint8 back into float32
with NaN: the main process's time for that is printed too; on a GPU it is the device's), and the
peak of /dev/shm while the workers keep their batches in flight there
(num_workers x prefetch_factor). Both formats give the same float labels after `DeviceBatches`:
tests/data/test_datasets.py checks that.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loader import SCALE, add_crops_arguments, ensure_crops  # noqa: E402  (the same data as the loader benchmark)

REPO = Path(__file__).resolve().parents[1]
SHM = Path("/dev/shm")


class ShmPeak:
    """The most of /dev/shm in use while the block runs, sampled every 5 ms (0 where there is none)."""

    def __enter__(self) -> "ShmPeak":
        self.peak, self.running = 0, SHM.is_dir()
        self.base = shutil.disk_usage(SHM).used if self.running else 0
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self) -> None:
        while self.running:
            self.peak = max(self.peak, shutil.disk_usage(SHM).used - self.base)
            time.sleep(0.005)

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join()


def measure(root: Path, split: Path, classes: list[str], label_format: str, args) -> dict:
    import torch

    from cellmap_train.data import CellMapData
    from cellmap_train.data.transforms import BinarizeLabels, NormalizeRaw, SampleTransforms, SpatialTransform
    from cellmap_train.engine.prefetch import DeviceBatches
    from cellmap_train.data.label_transfer import as_float

    target = BinarizeLabels(dtype=label_format)
    data = CellMapData(str(root), split, classes, {"shape": args.shape, "scale": SCALE}, batch_size=args.batch,
                       validation_prob=0.25, chunk_cache_mb=256,
                       dataloader_kwargs={"num_workers": args.workers, "prefetch_factor": 4},
                       train_transforms=SampleTransforms(SpatialTransform({"x": 0.5, "y": 0.5}), NormalizeRaw(), target))
    loader = data.train_loader()
    sent = next(iter(loader))[1]  # one batch as the workers send it
    start = time.perf_counter()
    for _ in range(5):
        as_float(sent)
    decode_ms = (time.perf_counter() - start) / 5 * 1000
    batches = DeviceBatches(loader, torch.device("cpu"))
    for _ in range(args.warmup):
        next(batches)
    with ShmPeak() as shm:
        start = time.perf_counter()
        for _ in range(args.batches):
            _, labels = next(batches)
        seconds = time.perf_counter() - start
    assert labels.dtype == torch.float32
    return {"bytes": sent.nbytes, "batches_per_s": args.batches / seconds, "shm": shm.peak, "decode_ms": decode_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_crops_arguments(parser)
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 64, 64], help="sample shape [D H W]")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=4, help="batches before timing (workers started, queue full)")
    parser.add_argument("--batches", type=int, default=12, help="timed batches per format and round")
    args = parser.parse_args()
    from cellmap_train.data.datasplit import make_datasplit_csv

    root = ensure_crops(args)
    classes = list(OmegaConf.load(REPO / "conf" / "experiment" / "train_3D.yaml").classes)
    results: dict[str, list[dict]] = {"float32": [], "uint8": []}
    with tempfile.TemporaryDirectory() as tmp:
        split = Path(tmp) / "split.csv"
        make_datasplit_csv(classes, False, 0.25, base_path=str(root), csv_path=split)
        for label_format in [*results] * 2:  # alternated, twice
            results[label_format].append(measure(root, split, classes, label_format, args))
    best = {name: {"bytes": runs[0]["bytes"], "batches_per_s": max(r["batches_per_s"] for r in runs),
                   "shm": min(r["shm"] for r in runs), "decode_ms": min(r["decode_ms"] for r in runs)}
            for name, runs in results.items()}
    before, now = best["float32"], best["uint8"]
    print(f"labels of {len(classes)} classes, batch {args.batch} x {'x'.join(map(str, args.shape))}, "
          f"{args.workers} workers x prefetch 4 (best of 2 alternated rounds, {args.batches} batches each)")
    print(f"{'':24s} {'float32 + NaN':>14s} {'uint8 + 255':>12s} {'ratio':>7s}")
    print(f"{'MiB per label batch':24s} {before['bytes'] / 2**20:14.1f} {now['bytes'] / 2**20:12.1f} "
          f"{before['bytes'] / now['bytes']:6.2f}x")
    print(f"{'batches/s':24s} {before['batches_per_s']:14.2f} {now['batches_per_s']:12.2f} "
          f"{now['batches_per_s'] / before['batches_per_s']:6.2f}x")
    print(f"{'to float32 + NaN, ms':24s} {'-':>14s} {now['decode_ms']:12.2f}   (main process, per batch, on a CPU)")
    if before["shm"] and now["shm"]:
        print(f"{'peak /dev/shm MiB':24s} {before['shm'] / 2**20:14.1f} {now['shm'] / 2**20:12.1f} "
              f"{before['shm'] / now['shm']:6.2f}x")


if __name__ == "__main__":
    main()
