"""Data loader benchmark: this project's loader vs cellmap-data on the same local data.

    python benchmarks/loader.py [--cellmap-data-python /path/to/venv/bin/python] [--workers 0]

Prints, side by side in one run: samples/s for 1x128x128 and 128^3 random crops with the
default spatial transforms (mirror x,y; transpose x,y; rotate about z) and value transforms,
for both loaders (ours with its decoded-chunk cache off and on) and their ratios; then the
peak RSS of a training process (2 workers) on 8 vs 80 crops, chunk cache off and at the local
default. The data (demo layout, 8 crops of 256^3 voxels) is generated once into --data-dir.
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
BATCH = {"1x128x128": 8, "128^3": 2}
# timed batches after warm-up ones, per shape: a training run is thousands of steps, so both
# loaders are timed once whatever they cache (ours: decoded chunks) has filled
TIMED = {"1x128x128": (40, 200), "128^3": (3, 20)}
SPATIAL = {"mirror": {"x": 0.5, "y": 0.5}, "transpose": ["x", "y"], "rotate": {"z": [-180, 180]}}


def ensure_data(root: Path, crops: int, crop_shape, raw_shape) -> Path:
    """Demo-layout data with `crops` crops, made once (marker file) and reused."""
    from cellmap_train.data.demo import DemoSpec, make_demo_data

    if not (root / ".complete").exists():
        print(f"generating {crops} crops of {crop_shape} voxels in {root} (once) ...", flush=True)
        make_demo_data(root, DemoSpec(n_datasets=1, raw_shape=tuple(raw_shape), crop_shape=tuple(crop_shape),
                                      crops_per_dataset=crops, chunks=(64, 64, 64), missing={}))
    return root


def add_crops_arguments(parser: argparse.ArgumentParser) -> None:
    """--data-dir, and --crop-size for the tests' smaller data: the rotation and label benchmarks'."""
    parser.add_argument("--data-dir", type=Path, default=Path.home() / ".cache/cellmap_train/bench-loader")
    parser.add_argument("--crop-size", type=int, default=256, help=argparse.SUPPRESS)


def ensure_crops(args: argparse.Namespace) -> Path:
    """8 crops of crop-size^3 voxels in a volume 32 voxels wider (this benchmark's 3D data at 256)."""
    size = args.crop_size
    return ensure_data(args.data_dir / f"crops8-{size}", 8, (size,) * 3, (size + 32,) * 3)


def ensure_split(root: Path) -> Path:
    from cellmap_train.data.datasplit import make_datasplit_csv

    csv_path = root / "datasplit.csv"
    make_datasplit_csv(CLASSES, False, 0.25, base_path=str(root), csv_path=csv_path)
    return csv_path


def default_cache_mb() -> float:
    from omegaconf import OmegaConf

    return float(OmegaConf.load(Path(__file__).parents[1] / "conf" / "data" / "demo.yaml").chunk_cache_mb)


def measure_ours(root: Path, csv_path: Path, shape, warmup: int, batches: int, batch_size: int, workers: int,
                 cache_mb: float) -> dict:
    from cellmap_train.data import CellMapData
    from cellmap_train.data.transforms import BinarizeLabels, NormalizeRaw, SampleTransforms, SpatialTransform

    start = time.perf_counter()
    data = CellMapData(str(root), csv_path, CLASSES, {"shape": shape, "scale": SCALE}, batch_size=batch_size,
                       dataloader_kwargs={"num_workers": workers}, chunk_cache_mb=cache_mb,
                       train_transforms=SampleTransforms(SpatialTransform(**SPATIAL), NormalizeRaw(), BinarizeLabels()))
    return time_batches(iter(data.train_loader()), warmup, batches, batch_size, start)


def time_batches(iterator, warmup: int, batches: int, batch_size: int, start: float) -> dict:
    """Samples/s over `batches` batches after `warmup` more (the first includes start-up)."""
    next(iterator)
    first = time.perf_counter()
    for _ in range(warmup - 1):
        next(iterator)
    warm = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    seconds = time.perf_counter() - warm
    return {"samples_per_s": batches * batch_size / seconds, "startup_s": first - start,
            "warmup_samples_per_s": (warmup - 1) * batch_size / max(warm - first, 1e-9)}


def measure_cellmap_data(csv_path: str, shape, warmup: int, batches: int, batch_size: int, workers: int) -> dict:
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
                               weighted_sampler=True, iterations_per_epoch=(warmup + batches) * batch_size)
    return time_batches(iter(loader), warmup, batches, batch_size, start)


def run_cellmap_data(python: str | None, csv_path: Path, shape, warmup: int, batches: int, batch_size: int,
                     workers: int) -> dict | str:
    if not python:
        return "skipped (no --cellmap-data-python)"
    args = json.dumps([str(csv_path), shape, warmup, batches, batch_size, workers])
    proc = subprocess.run([python, __file__, "--cellmap-data-worker", args], capture_output=True, text=True)
    if proc.returncode != 0:
        return f"failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def tree_memory_bytes(pid: int) -> tuple[int, int, int]:
    """(RSS, PSS) summed over a process and its descendants (workers), and the largest single
    RSS, from /proc. Summed RSS counts the torch libraries every worker maps once per process;
    PSS splits shared pages fairly."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    rss = pss = largest = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        try:
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    kib = int(line.split()[1]) * 1024
                    rss, largest = rss + kib, max(largest, kib)
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
        except OSError:
            pass
    return rss, pss, largest


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
    return {"rss_gib": max(r for r, _, _ in samples) / gib, "pss_gib": max(p for _, p, _ in samples) / gib,
            "process_rss_gib": max(m for _, _, m in samples) / gib,
            "pss_first_half_gib": max([p for _, p, _ in samples[:half]] or [0]) / gib,
            "pss_second_half_gib": max([p for _, p, _ in samples[half:]] or [0]) / gib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path.home() / ".cache/cellmap_train/bench-loader")
    parser.add_argument("--cellmap-data-python", default=None, help="python of a venv with cellmap-data installed")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers for the throughput part (both loaders)")
    parser.add_argument("--batches", type=int, default=0, help="timed batches for every shape (default: per shape)")
    parser.add_argument("--cache-mb", type=float, default=None, help="data.chunk_cache_mb for the 'cache' column "
                        "(default: the local default, conf/data/demo.yaml)")
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES), help="sample shapes to time")
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--rss-iterations", type=int, default=150, help="iterations per epoch (2 epochs) of the memory runs")
    parser.add_argument("--cellmap-data-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cellmap_data_worker:
        print(json.dumps(measure_cellmap_data(*json.loads(args.cellmap_data_worker))))
        return
    local_default_mb = default_cache_mb()
    if args.cache_mb is None:
        args.cache_mb = local_default_mb
    big = ensure_data(args.data_dir / "crops8-256", 8, (256, 256, 256), (288, 288, 288))
    csv_path = ensure_split(big)
    print(f"throughput, {args.workers} workers, {os.cpu_count()} CPU cores (shared), data {big}")
    print(f"chunk cache: off, and data.chunk_cache_mb={args.cache_mb:g} per process (the local default: {local_default_mb:g})")
    print(f"{'sample':<11} {'batch':>5} {'warm-up+timed':>13} {'ours, no cache':>15} {'ours, cache':>12} {'cellmap-data':>13} "
          f"{'ratio no cache':>15} {'ratio cache':>12}   [samples/s, timed part]   during warm-up (ours cache / theirs)")
    for label in args.shapes:
        shape, batch, (warmup, batches) = SHAPES[label], BATCH[label], TIMED[label]
        if args.batches:
            warmup, batches = max(1, args.batches // 5), args.batches
        plain = measure_ours(big, csv_path, shape, warmup, batches, batch, args.workers, 0)
        cached = measure_ours(big, csv_path, shape, warmup, batches, batch, args.workers, args.cache_mb)
        theirs = run_cellmap_data(args.cellmap_data_python, csv_path, shape, warmup, batches, batch, args.workers)
        row = (f"{label:<11} {batch:>5} {f'{warmup}+{batches}':>13} {plain['samples_per_s']:>15.1f} "
               f"{cached['samples_per_s']:>12.1f}")
        if isinstance(theirs, dict):
            rate = theirs["samples_per_s"]
            print(f"{row} {rate:>13.2f} {plain['samples_per_s'] / rate:>14.1f}x {cached['samples_per_s'] / rate:>11.1f}x"
                  f"   {cached['warmup_samples_per_s']:.1f} / {theirs['warmup_samples_per_s']:.1f}")
        else:
            print(f"{row} {theirs:>13}")
    if args.skip_rss:
        return
    print(f"peak memory of training (experiment=demo data=cellmap, 2 workers, 2 x {args.rss_iterations} iterations)")
    # off, and the local default (per process: the main one and each worker holds its own)
    for cache_mb in (0, local_default_mb):
        for crops in (8, 80):
            root = ensure_data(args.data_dir / f"crops{crops}-64x128x128", crops, (64, 128, 128), (96, 320, 320))
            rss = training_peak_rss(root, iterations=args.rss_iterations, cache_mb=cache_mb)
            print(f"chunk cache {cache_mb:>3g} MiB, {crops:>2} crops: largest process RSS {rss['process_rss_gib']:.2f} GiB; "
                  f"all processes PSS {rss['pss_gib']:.2f} GiB (first half of the run {rss['pss_first_half_gib']:.2f}, "
                  f"second half {rss['pss_second_half_gib']:.2f}), RSS summed {rss['rss_gib']:.2f} GiB")


if __name__ == "__main__":
    main()
