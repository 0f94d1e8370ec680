"""Data loader benchmark: this project's loader vs cellmap-data on the same local data.

    python benchmarks/loader.py [--cellmap-data-python /path/to/venv/bin/python] [--workers 0]

Prints, side by side in one run: samples/s for 1x128x128 and 128^3 random crops with the
default spatial transforms (mirror x,y; transpose x,y; rotate about z) and value transforms,
for both loaders (ours with its decoded-chunk cache off and on) and their ratios; then the
peak RSS of a training process (2 workers) on 8 vs 80 crops, chunk cache off (the local default) and at 64 MiB. The data (demo layout, 8 crops of 256^3 voxels) is generated once into --data-dir.
cellmap-data pins zarr 2, so it runs in a separate interpreter (its own venv), never imported here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLASSES = ["nuc", "er", "mito"]
SCALE = [8, 8, 8]
SHAPES = {"1x128x128": [1, 128, 128], "128^3": [128, 128, 128]}
SPATIAL = {"mirror": {"x": 0.5, "y": 0.5}, "transpose": ["x", "y"], "rotate": {"z": [-180, 180]}}


def ensure_data(root: Path, crops: int, crop_shape, raw_shape) -> Path:
    """Demo-layout data with `crops` crops, made once (marker file) and reused."""
    from cellmap_train.data.demo import DemoSpec, make_demo_data

    if not (root / ".complete").exists():
        print(f"generating {crops} crops of {crop_shape} voxels in {root} (once) ...", flush=True)
        make_demo_data(root, DemoSpec(n_datasets=1, raw_shape=tuple(raw_shape), crop_shape=tuple(crop_shape),
                                      crops_per_dataset=crops, chunks=(64, 64, 64), missing={}))
    return root


def ensure_split(root: Path) -> Path:
    from cellmap_train.data.datasplit import make_datasplit_csv

    csv_path = root / "datasplit.csv"
    make_datasplit_csv(CLASSES, False, 0.25, base_path=str(root), csv_path=csv_path)
    return csv_path


def measure_ours(root: Path, csv_path: Path, shape, batches: int, batch_size: int, workers: int, cache_mb: float) -> dict:
    from cellmap_train.data import CellMapData
    from cellmap_train.data.transforms import BinarizeLabels, NormalizeRaw, SampleTransforms, SpatialTransform

    start = time.perf_counter()
    data = CellMapData(str(root), csv_path, CLASSES, {"shape": shape, "scale": SCALE}, batch_size=batch_size,
                       dataloader_kwargs={"num_workers": workers}, chunk_cache_mb=cache_mb,
                       train_transforms=SampleTransforms(SpatialTransform(**SPATIAL), NormalizeRaw(), BinarizeLabels()))
    return time_batches(iter(data.train_loader()), batches, batch_size, start)


def time_batches(iterator, batches: int, batch_size: int, start: float) -> dict:
    """Samples/s over `batches` batches after the first (which includes start-up)."""
    next(iterator)
    first = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    seconds = time.perf_counter() - first
    return {"samples_per_s": batches * batch_size / seconds, "startup_s": first - start}


def measure_cellmap_data(csv_path: str, shape, batches: int, batch_size: int, workers: int) -> dict:
    """Runs inside the cellmap-data venv: the challenge's train-time loader construction."""
    import types

    # torchvision's PyPI wheel links CUDA torch; its C ops (unused here) fail to load on CPU torch
    for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
        sys.modules.setdefault(name, types.ModuleType(name))
    import torch
    import torchvision.transforms.v2 as T
    from cellmap_data import CellMapDataLoader, CellMapDataSplit
    from cellmap_data.transforms import Binarize

    start = time.perf_counter()
    spatial = {"mirror": {"axes": SPATIAL["mirror"]}, "transpose": {"axes": SPATIAL["transpose"]},
               "rotate": {"axes": SPATIAL["rotate"]}}
    arrays = {"shape": shape, "scale": SCALE}
    split = CellMapDataSplit(input_arrays={"input": arrays}, target_arrays={"output": arrays}, classes=CLASSES, pad=True,
                             csv_path=csv_path, spatial_transforms=spatial,
                             target_value_transforms=T.Compose([T.ToDtype(torch.float), Binarize()]))
    loader = CellMapDataLoader(split.train_datasets_combined, classes=CLASSES, batch_size=batch_size, num_workers=workers,
                               weighted_sampler=True, iterations_per_epoch=(batches + 1) * batch_size)
    return time_batches(iter(loader), batches, batch_size, start)


def run_cellmap_data(python: str | None, csv_path: Path, shape, batches: int, batch_size: int, workers: int) -> dict | str:
    if not python:
        return "skipped (no --cellmap-data-python)"
    args = json.dumps([str(csv_path), shape, batches, batch_size, workers])
    proc = subprocess.run([python, __file__, "--cellmap-data-worker", args], capture_output=True, text=True)
    if proc.returncode != 0:
        return f"failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def tree_memory_bytes(pid: int) -> tuple[int, int]:
    """(RSS, PSS) summed over a process and its descendants (workers), from /proc. RSS counts
    the torch libraries every worker maps once per process; PSS splits shared pages fairly."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    rss = pss = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        try:
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith(("Rss:", "Pss:")):
                    kib = int(line.split()[1]) * 1024
                    rss, pss = (rss + kib, pss) if line.startswith("Rss:") else (rss, pss + kib)
        except OSError:
            pass
    return rss, pss


def training_peak_rss(root: Path, iterations: int, cache_mb: float) -> dict:
    """Peak RSS (main + 2 workers) of `python -m cellmap_train` training on `root`."""
    with tempfile.TemporaryDirectory() as run_dir:
        cmd = [sys.executable, "-m", "cellmap_train", "experiment=demo", "data=cellmap", f"paths.data_dir={root}",
               "data.dataloader_kwargs.num_workers=2", f"data.chunk_cache_mb={cache_mb:g}", "epochs=2",
               f"iterations_per_epoch={iterations}",
               "validation_batch_limit=4", "trainer.progress_bar=false", f"hydra.run.dir={run_dir}"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        samples = []
        while proc.poll() is None:
            samples.append(tree_memory_bytes(proc.pid))
            time.sleep(0.2)
        if proc.returncode != 0:
            raise RuntimeError(f"training failed: {proc.stderr.read()[-2000:]}")
    half = len(samples) // 2
    gib = 2**30
    return {"rss_gib": max(r for r, _ in samples) / gib, "pss_gib": max(p for _, p in samples) / gib,
            "pss_first_half_gib": max([p for _, p in samples[:half]] or [0]) / gib,
            "pss_second_half_gib": max([p for _, p in samples[half:]] or [0]) / gib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path.home() / ".cache/cellmap_train/bench-loader")
    parser.add_argument("--cellmap-data-python", default=None, help="python of a venv with cellmap-data installed")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers for the throughput part (both loaders)")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--cache-mb", type=float, default=512, help="data.chunk_cache_mb for the 'cache' column")
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--cellmap-data-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cellmap_data_worker:
        print(json.dumps(measure_cellmap_data(*json.loads(args.cellmap_data_worker))))
        return
    big = ensure_data(args.data_dir / "crops8-256", 8, (256, 256, 256), (288, 288, 288))
    csv_path = ensure_split(big)
    print(f"throughput, {args.workers} workers, {os.cpu_count()} CPU cores (shared), data {big}")
    print(f"chunk cache: off (the local default), and data.chunk_cache_mb={args.cache_mb:g} per process")
    print(f"{'sample':<11} {'batch':>5} {'ours, no cache':>15} {'ours, cache':>12} {'cellmap-data':>13} "
          f"{'ratio no cache':>15} {'ratio cache':>12}   start-up s (ours / cellmap-data)   [samples/s]")
    for label, shape in SHAPES.items():
        batch = 8 if shape[0] == 1 else 2
        plain = measure_ours(big, csv_path, shape, args.batches, batch, args.workers, 0)
        cached = measure_ours(big, csv_path, shape, args.batches, batch, args.workers, args.cache_mb)
        theirs = run_cellmap_data(args.cellmap_data_python, csv_path, shape, args.batches, batch, args.workers)
        row = f"{label:<11} {batch:>5} {plain['samples_per_s']:>15.1f} {cached['samples_per_s']:>12.1f}"
        if isinstance(theirs, dict):
            rate = theirs["samples_per_s"]
            print(f"{row} {rate:>13.2f} {plain['samples_per_s'] / rate:>14.1f}x {cached['samples_per_s'] / rate:>11.1f}x"
                  f"   {plain['startup_s']:.1f} / {theirs['startup_s']:.1f}")
        else:
            print(f"{row} {theirs:>13}")
    if args.skip_rss:
        return
    print("peak memory of training (experiment=demo data=cellmap, 2 workers; main + workers summed)")
    # 0 = the local default; 64 MiB = what experiment=demo sets (per process, so up to 3x that)
    for cache_mb in (0, 64):
        for crops in (8, 80):
            root = ensure_data(args.data_dir / f"crops{crops}-64x128x128", crops, (64, 128, 128), (96, 320, 320))
            rss = training_peak_rss(root, iterations=40, cache_mb=cache_mb)
            print(f"chunk cache {cache_mb:>2g} MiB, {crops:>2} crops: PSS {rss['pss_gib']:.2f} GiB (first half of the run "
                  f"{rss['pss_first_half_gib']:.2f}, second half {rss['pss_second_half_gib']:.2f}); RSS {rss['rss_gib']:.2f} GiB")


if __name__ == "__main__":
    main()
