"""Forward + backward throughput of the five model options at their default widths and sample shapes.

    python benchmarks/models.py [--iterations-2d 3] [--iterations-3d 1] [--batch-2d 8] [--device cpu]
                                [--channels-last auto|true|false]

Each model is built from its conf/model/*.yaml (2 classes), in the memory layout training would
use (`trainer.channels_last`: auto = channels-last on CPU, the default layout elsewhere), given one
untimed warm-up step (not for 3D on a CPU, where one step takes up to a minute), then timed over a few
steps; the table gives samples/s, voxels/s and the ratio to 2d_unet.
"""

from __future__ import annotations

import argparse
import gc
import math
import time

import torch
from hydra import compose, initialize_config_dir

from cellmap_train.config.location import config_dir
from cellmap_train.engine.channels_last import apply_layout, to_channels_last, wants_channels_last
from cellmap_train.engine.settings import wants_cudnn_benchmark
from cellmap_train.config.build import build_model

# 2D options on the default [1,128,128] slices, 3D ones on the challenge's train_3D shape
SHAPES = {"2d_unet": [1, 128, 128], "2d_resnet": [1, 128, 128], "3d_unet": [128, 128, 128],
          "3d_resnet": [128, 128, 128], "vitnet": [128, 128, 128]}

LAYOUTS = {"auto": None, "true": True, "false": False}  # --channels-last -> trainer.channels_last


def build(option: str, shape: list[int]) -> torch.nn.Module:
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={option}", f"input_array_info.shape=[{','.join(map(str, shape))}]"])
    return build_model(cfg.model)


def step(model: torch.nn.Module, x: torch.Tensor) -> None:
    model(x).square().mean().backward()
    model.zero_grad(set_to_none=True)


def measure(option: str, shape: list[int], batch: int, iterations: int, device: torch.device, warmup: bool,
            layout: bool | None) -> dict:
    model = build(option, shape).to(device)
    spatial = shape[1:] if shape[0] == 1 else shape
    x = torch.rand(batch, 1, *spatial, device=device)
    if apply_layout(model, layout, device):
        x = to_channels_last(x)
    if warmup:  # allocator, kernel selection; negligible next to one 128^3 step on a CPU
        step(model, x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iterations):
        step(model, x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / iterations
    params = sum(p.numel() for p in model.parameters())
    del model, x
    gc.collect()
    return {"option": option, "shape": shape, "batch": batch, "params": params, "seconds": seconds,
            "samples_per_s": batch / seconds, "mvox_per_s": batch * math.prod(spatial) / seconds / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations-2d", type=int, default=3)
    parser.add_argument("--iterations-3d", type=int, default=1)
    parser.add_argument("--batch-2d", type=int, default=8, help="the default batch_size")
    parser.add_argument("--batch-3d", type=int, default=1, help="8 is the default; 1 keeps CPU memory small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--channels-last", choices=LAYOUTS, default="auto", help="auto: as training decides for the device")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = wants_cudnn_benchmark(None, False, device)  # a run's default
    layout = LAYOUTS[args.channels_last]
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, "
          f"{'channels-last' if wants_channels_last(layout, device) else 'default'} layout")
    rows = []
    for option, shape in SHAPES.items():
        is_2d = shape[0] == 1
        rows.append(measure(option, shape, args.batch_2d if is_2d else args.batch_3d,
                            args.iterations_2d if is_2d else args.iterations_3d, device,
                            warmup=is_2d or device.type != "cpu", layout=layout))
        print(f"  measured {option}", flush=True)
    reference = rows[0]["samples_per_s"]
    print(f"\n{'model':<10} {'sample shape':<16} {'batch':>5} {'params':>8} {'s/step':>8} {'samples/s':>10} "
          f"{'Mvox/s':>8} {'vs 2d_unet':>10}")
    for r in rows:
        print(f"{r['option']:<10} {str(r['shape']):<16} {r['batch']:>5} {r['params'] / 1e6:>7.1f}M {r['seconds']:>8.2f} "
              f"{r['samples_per_s']:>10.3f} {r['mvox_per_s']:>8.3f} {r['samples_per_s'] / reference:>9.3f}x")


if __name__ == "__main__":
    main()
