"""Sliding-window prediction against the model's own forward pass on the same tiles, pre-loaded.

    python benchmarks/predict.py [--model 2d_unet|3d_unet] [--base-features 16] [--crop 32 192 192]
                                 [--tile 1 128 128] [--batch 8] [--rounds 3] [--device cpu] [--mirror]

Both sides run the same model (built from conf/model/<model>.yaml at --base-features) on the same
tiles: "forward" is the model (and its sigmoid) on every tile of the sliding window, already in
memory as one tensor; "predict" is the whole prediction of a crop of the demo data at 8 nm (read the
raw, cut tiles, forward, Gaussian blending, threshold, write the zarr store). The ratio
forward time / predict time is the share of the model's own throughput that prediction keeps
(1.0 = no overhead). Rounds alternate the two; the table gives each round and the median.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from cellmap_train.config.location import config_dir
from cellmap_train.data.demo import DemoSpec, ensure_demo_data
from cellmap_train.data.transforms import NormalizeRaw
from cellmap_train.engine.settings import pick_device
from cellmap_train.config.build import build_model
from cellmap_train.predict.predictor import ModelSpec, PredictOptions, Predictor, model_grid
from cellmap_train.predict.run import predict_targets
from cellmap_train.predict.targets import box_target
from cellmap_train.predict.window import TileGrid, TileRunner

CLASSES = ["nuc", "er", "mito"]


def build(option: str, tile: list[int], base: int) -> torch.nn.Module:
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={option}", f"input_array_info.shape=[{','.join(map(str, tile))}]",
                                           f"classes=[{','.join(CLASSES)}]", f"model.base_features={base}"])
    return build_model(cfg.model)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="2d_unet")
    p.add_argument("--base-features", type=int, default=16)
    p.add_argument("--crop", type=int, nargs=3, default=[32, 192, 192], help="output voxels (z y x) at 8 nm")
    p.add_argument("--tile", type=int, nargs=3, default=[1, 128, 128])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default=None)
    p.add_argument("--mirror", action="store_true")
    p.add_argument("--amp", default="auto")
    args = p.parse_args()
    device = pick_device(args.device)
    torch.manual_seed(0)
    model = build(args.model, args.tile, args.base_features).to(device).eval()
    root = ensure_demo_data(Path(tempfile.gettempdir()) / "cellmap_train_predict_bench",
                            DemoSpec(n_datasets=1, raw_shape=(64, 256, 256), grids={}))
    raw_url = str(root / "jrc_demo-1/jrc_demo-1.zarr/recon-1/em/fibsem-uint8")
    low = np.array([40.0, 80.0, 120.0]) - 4 + 8 * 4  # on the raw's voxels, 4 voxels in
    target = box_target(raw_url, "crop1", low, low + 8 * np.asarray(args.crop), [8, 8, 8], CLASSES)
    spec = ModelSpec(CLASSES, (8.0, 8.0, 8.0), tuple(args.tile), tuple(args.tile))
    runner = TileRunner(model, device, 2 if args.tile[0] == 1 else 3, args.mirror, args.amp, prepare=NormalizeRaw())
    options = PredictOptions(batch_size=args.batch)
    predictor = Predictor(spec, runner, options)
    plan = model_grid(target, spec.scale, predictor.open_raw(target))
    tiles = len(TileGrid(plan.shape, spec.output_shape, options.overlap).starts())
    loaded = torch.rand(tiles, 1, *args.tile, generator=torch.Generator().manual_seed(0))  # pre-loaded, normalised
    if args.tile[0] == 1:
        loaded = loaded[:, :, 0]
    loaded = loaded.to(device)
    tile_voxels, out_voxels = tiles * int(np.prod(args.tile)), int(np.prod(args.crop)) * len(CLASSES)

    def forward() -> float:
        start = time.perf_counter()
        with torch.no_grad(), runner_autocast(runner):
            for i in range(0, tiles, args.batch):
                for flip in runner.flips:
                    batch = loaded[i:i + args.batch]
                    torch.sigmoid(model(batch.flip(flip) if flip else batch).float()).cpu()
        return time.perf_counter() - start

    def predict(k: int) -> float:
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            predict_targets([target], predictor, Path(folder) / f"p{k}.zarr", {"checkpoint": "bench"}, progress_bar=False)
            return time.perf_counter() - start

    forward(), predict(-1)  # warm-up: allocator, oneDNN kernels, the chunk files in the page cache
    print(f"device {device}, model {args.model} (base {args.base_features}), tile {args.tile}, batch {args.batch}, "
          f"overlap 0.5, mirror {args.mirror}; crop {args.crop} at 8 nm = {tiles} tiles, {tile_voxels / 1e6:.1f} M tile voxels")
    print(f"{'round':>5} {'forward s':>10} {'predict s':>10} {'forward Mvox/s':>15} {'predict Mvox/s':>15} {'ratio':>6}")
    ratios, predict_times = [], []
    for k in range(args.rounds):
        first, second = (forward, lambda: predict(k)) if k % 2 == 0 else (lambda: predict(k), forward)
        a, b = first(), second()
        t_forward, t_predict = (a, b) if k % 2 == 0 else (b, a)
        ratios.append(t_forward / t_predict)
        predict_times.append(t_predict)
        print(f"{k + 1:>5} {t_forward:>10.2f} {t_predict:>10.2f} {tile_voxels / t_forward / 1e6:>15.2f} "
              f"{tile_voxels / t_predict / 1e6:>15.2f} {ratios[-1]:>6.2f}")
    print(f"ratio predict/forward (tile voxels per second): median {statistics.median(ratios):.2f}; prediction writes "
          f"{out_voxels / statistics.median(predict_times) / 1e6:.2f} M output label voxels/s "
          f"({len(CLASSES)} classes x {int(np.prod(args.crop))} voxels per crop)")


def runner_autocast(runner: TileRunner):
    from cellmap_train.predict.window import autocast_for

    return autocast_for(runner.device, runner.amp)


if __name__ == "__main__":
    main()
