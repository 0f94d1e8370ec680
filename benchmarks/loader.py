"""Data loader benchmark: this project's loader vs cellmap-data on the same local data.

    python benchmarks/loader.py [--cellmap-data-python /path/to/venv/bin/python] [--workers 0]
        [--batches 50 6] [--repeats 2] [--skip-rss]

Prints, side by side in one run: samples/s for 1x128x128 and 128^3 random crops at 8 nm with the
default spatial transforms (mirror x,y; transpose x,y; rotate about z) and value transforms,
for both loaders (ours with its decoded-chunk cache off and on) and their ratios, on two data
sets with the same crop layout in voxels (8 crops of 256^3 in a 288^3 volume): isotropic 8 nm
voxels (read as they are) and anisotropic ones, levels [2.62, 2, 2] * 2^k as jrc_hela-2 (ours
reads s1 [5.24, 4, 4] and resamples; cellmap-data picks s2 [10.48, 8, 8], so it is also timed
made to read ours' level, for equal work); then ours anisotropic / isotropic. `--repeats`
alternates the data sets and keeps each rate's best pass (for cores shared with other work).
Last, the peak RSS of a training process (2 workers) on 8 vs 80 crops, chunk cache off and at
the local default. The data is generated once into --data-dir. cellmap-data pins zarr 2, so it
runs in a separate interpreter (its own venv), never imported here.
"""

from __future__ import annotations

import argparse
import json
import math
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


# the anisotropic data's generated grid (its s1) and the levels written: one finer (s0 [2.62, 2, 2],
# its voxels repeated), then coarser ones up to s3 [20.96, 16, 16]
ANISO_VOXEL = (5.24, 4.0, 4.0)
ANISO_LEVELS = {"finer_levels": 1, "levels": 3}


def ensure_data(root: Path, crops: int, crop_shape, raw_shape, voxel=None) -> Path:
    """Demo-layout data with `crops` crops, made once (marker file) and reused: at 8 nm, or on the
    anisotropic grid (`voxel` nm, with ANISO_LEVELS)."""
    from cellmap_train.data.demo import DemoSpec, make_demo_data

    if not (root / ".complete").exists():
        where = f" at {list(voxel)} nm" if voxel else ""
        print(f"generating {crops} crops of {crop_shape} voxels{where} in {root} (once) ...", flush=True)
        grid = {"grids": {0: (tuple(voxel), tuple(raw_shape), tuple(crop_shape))}, **ANISO_LEVELS} if voxel else {}
        make_demo_data(root, DemoSpec(n_datasets=1, raw_shape=tuple(raw_shape), crop_shape=tuple(crop_shape),
                                      crops_per_dataset=crops, chunks=(64, 64, 64), missing={}, **grid))
    return root


def add_crops_arguments(parser: argparse.ArgumentParser) -> None:
    """--data-dir, and --crop-size for the tests' smaller data: the rotation and label benchmarks'."""
    parser.add_argument("--data-dir", type=Path, default=Path.home() / ".cache/cellmap_train/bench-loader")
    parser.add_argument("--crop-size", type=int, default=256, help=argparse.SUPPRESS)


def ensure_crops(args: argparse.Namespace) -> Path:
    """8 crops of crop-size^3 voxels in a volume 32 voxels wider (this benchmark's 3D data at 256)."""
    size = args.crop_size
    return ensure_data(args.data_dir / f"crops8-{size}", 8, (size,) * 3, (size + 32,) * 3)


def ensure_anisotropic_crops(args: argparse.Namespace) -> Path:
    """The same crop layout in voxels on the [2.62, 2, 2] * 2^k grid: crops of 256 voxels at
    [5.24, 4, 4] span 1341 x 1024 x 1024 nm, room for 128^3 samples at 8 nm."""
    size = args.crop_size
    return ensure_data(args.data_dir / f"crops8-{size}-aniso", 8, (size,) * 3, (size + 32,) * 3, ANISO_VOXEL)


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
    result = time_batches(iter(data.train_loader()), warmup, batches, batch_size, start)
    crop = data.train_set.crops[0]
    result["raw_level"] = [crop.raw_level.path.rsplit("/", 1)[1], list(crop.raw_level.scale)]
    return result


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


def measure_cellmap_data(csv_path: str, shape, warmup: int, batches: int, batch_size: int, workers: int,
                         our_level: bool = False) -> dict:
    """Runs inside the cellmap-data venv: the challenge's train-time loader construction.
    `our_level`: each array read from the level ours reads (an equal-work reference; cellmap-data
    itself picks the level nearest the request, summing relative differences over the axes)."""
    import types

    # torchvision's PyPI wheel links CUDA torch; its C ops (unused here) fail to load on CPU torch
    for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
        sys.modules.setdefault(name, types.ModuleType(name))
    import torch
    import torchvision.transforms.v2 as T
    from cellmap_data import CellMapDataLoader, CellMapDataSplit
    from cellmap_data.image import CellMapImage
    from cellmap_data.transforms import Binarize

    if our_level:
        CellMapImage.scale_level = property(ours_level_of)

    start = time.perf_counter()
    spatial = {"mirror": {"axes": SPATIAL["mirror"]}, "transpose": {"axes": SPATIAL["transpose"]},
               "rotate": {"axes": SPATIAL["rotate"]}}
    arrays = {"shape": shape, "scale": SCALE}
    split = CellMapDataSplit(input_arrays={"input": arrays}, target_arrays={"output": arrays}, classes=CLASSES, pad=True,
                             csv_path=csv_path, spatial_transforms=spatial,
                             target_value_transforms=T.Compose([T.ToDtype(torch.float), Binarize()]))
    loader = CellMapDataLoader(split.train_datasets_combined, classes=CLASSES, batch_size=batch_size, num_workers=workers,
                               weighted_sampler=True, iterations_per_epoch=(warmup + batches) * batch_size)
    result = time_batches(iter(loader), warmup, batches, batch_size, start)
    dataset = split.train_datasets_combined.datasets[0]
    for what, image in (("raw", dataset.input_sources["input"]), ("labels", dataset.target_sources[CLASSES[0]])):
        result[f"{what}_level"] = [image.scale_level, [image._voxel_size[ax] for ax in image.axes]]
    return result


def ours_level_of(image) -> int:
    """The level of a cellmap-data CellMapImage that ours reads for its voxel size (ngff.choose_level's
    rule, restated here: this runs in cellmap-data's venv, without our package)."""
    sizes = [[voxel.get(ax, 0.0) for ax in image.axes] for _, voxel, _ in image._level_info]
    wanted = [image.scale[ax] for ax in image.axes]
    volume = [float(math.prod(size)) for size in sizes]
    fine = [i for i, size in enumerate(sizes) if all(v <= w * (1 + 1e-6) for v, w in zip(size, wanted))]
    return max(fine, key=volume.__getitem__) if fine else min(range(len(sizes)), key=volume.__getitem__)


def run_cellmap_data(python: str | None, csv_path: Path, shape, warmup: int, batches: int, batch_size: int,
                     workers: int, our_level: bool = False) -> dict | str:
    if not python:
        return "skipped (no --cellmap-data-python)"
    args = json.dumps([str(csv_path), shape, warmup, batches, batch_size, workers, our_level])
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


def measure_dataset(name: str, root: Path, csv_path: Path, args: argparse.Namespace, shape, batch: int, warmup: int,
                    batches: int, best: dict | None) -> dict:
    """Times both loaders (ours without and with the chunk cache) on one data set; with `best`
    (an earlier pass's), keeps the faster pass of each."""
    timing = (warmup, batches, batch, args.workers)
    passes = {"plain": measure_ours(root, csv_path, shape, *timing, 0),
              "cached": measure_ours(root, csv_path, shape, *timing, args.cache_mb),
              "theirs": run_cellmap_data(args.cellmap_data_python, csv_path, shape, *timing)}
    if name == "anisotropic":  # the levels differ here: cellmap-data also from ours, for equal work
        passes["theirs, our level"] = run_cellmap_data(args.cellmap_data_python, csv_path, shape, *timing,
                                                       our_level=True)
    print(f"  pass, {name}: " + ", ".join(f"{key} {value['samples_per_s']:.1f}" if isinstance(value, dict) else
                                          f"{key} {value}" for key, value in passes.items()), flush=True)
    return passes if best is None else {key: _faster(best[key], value) for key, value in passes.items()}


def _faster(old: dict | str, new: dict | str) -> dict | str:
    """The pass with more samples/s (a failed or skipped one, a string, only when both are)."""
    if isinstance(new, dict) and (not isinstance(old, dict) or new["samples_per_s"] > old["samples_per_s"]):
        return new
    return old


def print_row(label: str, name: str, batch: int, warmup: int, batches: int, rates: dict) -> None:
    plain, cached, theirs = rates["plain"], rates["cached"], rates["theirs"]
    row = (f"{label:<11} {name:<11} {batch:>5} {f'{warmup}+{batches}':>13} {plain['samples_per_s']:>15.1f} "
           f"{cached['samples_per_s']:>12.1f}")
    if isinstance(theirs, dict):
        rate = theirs["samples_per_s"]
        during = (f"{cached['warmup_samples_per_s']:.1f} / {theirs['warmup_samples_per_s']:.1f}" if warmup > 1 else
                  "(no warm-up batch timed)")
        print(f"{row} {rate:>13.2f} {plain['samples_per_s'] / rate:>14.1f}x {cached['samples_per_s'] / rate:>11.1f}x"
              f"   {during}", flush=True)
    else:
        print(f"{row} {theirs:>13}", flush=True)


def print_summary(label: str, rates: dict) -> None:
    """The levels each loader reads on the anisotropic data; ours anisotropic / isotropic, and ours /
    cellmap-data on the anisotropic data, against the targets."""
    aniso, iso = rates.get("anisotropic"), rates.get("isotropic")
    if aniso is None:
        return
    theirs = aniso["theirs"]
    levels = f"ours reads raw {aniso['cached']['raw_level'][0]} {_nm(aniso['cached']['raw_level'][1])}"
    if isinstance(theirs, dict):
        levels += "; cellmap-data " + ", ".join(f"{what} s{theirs[what + '_level'][0]} {_nm(theirs[what + '_level'][1])}"
                                                for what in ("raw", "labels"))
    print(f"  {label} anisotropic levels read: {levels}")
    if iso is not None:
        ratio = {key: aniso[key]["samples_per_s"] / iso[key]["samples_per_s"] for key in ("plain", "cached")}
        print(f"  {label} ours anisotropic / isotropic: {ratio['cached']:.2f}x with the cache "
              f"(target >= 0.8x), {ratio['plain']:.2f}x without")
    if isinstance(theirs, dict):
        ratio = {key: aniso[key]["samples_per_s"] / theirs["samples_per_s"] for key in ("plain", "cached")}
        print(f"  {label} ours / cellmap-data on anisotropic data: {ratio['cached']:.1f}x with the cache "
              f"(target >= 5x), {ratio['plain']:.1f}x without", flush=True)
    same = aniso.get("theirs, our level")
    if isinstance(same, dict):
        ratio = {key: aniso[key]["samples_per_s"] / same["samples_per_s"] for key in ("plain", "cached")}
        print(f"  {label} ours / cellmap-data made to read ours' level, s{same['raw_level'][0]} "
              f"{_nm(same['raw_level'][1])} ({same['samples_per_s']:.2f} samples/s): {ratio['cached']:.1f}x with "
              f"the cache, {ratio['plain']:.1f}x without", flush=True)


def _nm(values) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in values) + "]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_crops_arguments(parser)
    parser.add_argument("--data", nargs="+", choices=["isotropic", "anisotropic"], default=["isotropic", "anisotropic"],
                        help="data sets to time")
    parser.add_argument("--cellmap-data-python", default=None, help="python of a venv with cellmap-data installed")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers for the throughput part (both loaders)")
    parser.add_argument("--batches", type=int, nargs="+", default=[0], help="timed batches for every shape, or one "
                        "count per shape in --shapes order (default: per shape); the warm-up is a fifth of it")
    parser.add_argument("--cache-mb", type=float, default=None, help="data.chunk_cache_mb for the 'cache' column "
                        "(default: the local default, conf/data/demo.yaml)")
    parser.add_argument("--repeats", type=int, default=1, help="alternated passes over the data sets; each rate is "
                        "the best pass's (for cores shared with other work)")
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
    makers = {"isotropic": ensure_crops, "anisotropic": ensure_anisotropic_crops}
    roots = [makers[name](args) for name in makers if name in args.data]  # generated once each
    datasets = {name: (root, ensure_split(root)) for name, root in zip([n for n in makers if n in args.data], roots)}
    print(f"throughput, {args.workers} workers, {os.cpu_count()} CPU cores (shared), data {args.data_dir}")
    print(f"chunk cache: off, and data.chunk_cache_mb={args.cache_mb:g} per process (the local default: {local_default_mb:g})")
    best = f", best of {args.repeats} alternated passes" if args.repeats > 1 else ""
    print(f"{'sample':<11} {'data':<11} {'batch':>5} {'warm-up+timed':>13} {'ours, no cache':>15} {'ours, cache':>12} "
          f"{'cellmap-data':>13} {'ratio no cache':>15} {'ratio cache':>12}   [samples/s, timed part{best}]   "
          f"during warm-up (ours cache / theirs)")
    counts = args.batches * len(args.shapes) if len(args.batches) == 1 else args.batches
    if len(counts) != len(args.shapes):
        parser.error(f"--batches: one count, or one per shape ({len(args.shapes)})")
    for label, count in zip(args.shapes, counts):
        shape, batch, (warmup, batches) = SHAPES[label], BATCH[label], TIMED[label]
        if count:
            warmup, batches = max(1, count // 5), count
        rates: dict = {name: None for name in datasets}
        for _ in range(args.repeats):  # the data sets alternate, so a busy spell on shared cores hits both
            for name, (root, csv_path) in datasets.items():
                rates[name] = measure_dataset(name, root, csv_path, args, shape, batch, warmup, batches, rates[name])
        for name in datasets:
            print_row(label, name, batch, warmup, batches, rates[name])
        print_summary(label, rates)
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
