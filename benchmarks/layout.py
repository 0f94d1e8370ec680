"""Memory layout benchmark: one training step (forward, backward, AdamW) of each model option at its
`experiment=demo` size, in the default layout (NCHW / NCDHW) and channels-last (NHWC / NDHWC), side
by side in one run. `trainer.channels_last: null` turns channels-last on for CPU runs on the
strength of these ratios.

    python benchmarks/layout.py [--steps 15] [--threads 1 2] [--models 2d_unet 3d_unet ...] [--device cuda --amp bf16]

The two layouts start from the same weights and alternate twice, so a load change on a shared
machine hits both alike. Ratio = default time / channels-last time (above 1: channels-last faster).
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from hydra import compose, initialize_config_dir

from cellmap_train.config.location import config_dir
from cellmap_train.engine.channels_last import model_to_channels_last, to_channels_last
from cellmap_train.engine.settings import wants_cudnn_benchmark
from cellmap_train.config.build import build_model

MODELS = ["2d_unet", "2d_resnet", "3d_unet", "3d_resnet", "vitnet"]
AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}


def demo_setup(option: str):
    """The model, sample shape and batch size `experiment=demo model=<option>` trains with."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=demo", f"model={option}"])
    shape = list(cfg.input_array_info.shape)
    spatial = shape[1:] if shape[0] == 1 else shape  # [1,H,W] trains 2D
    return build_model(cfg.model), [cfg.batch_size, 1, *spatial], len(cfg.classes)


def time_steps(model, optimizer, x, y, steps: int, device: torch.device, amp: str | None) -> float:
    autocast = torch.autocast(device.type, dtype=AMP[amp]) if amp else contextlib.nullcontext()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        with autocast:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def compare(option: str, threads: int, steps: int, device: torch.device, amp: str | None) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    plain, batch_shape, classes = demo_setup(option)
    last, _, _ = demo_setup(option)
    last.load_state_dict(plain.state_dict())
    plain.to(device).train()
    last.to(device).train()
    model_to_channels_last(last)
    x = torch.rand(batch_shape, device=device)
    y = (torch.rand(batch_shape[0], classes, *batch_shape[2:], device=device) > 0.5).float()
    variants = {"default": (plain, x), "channels_last": (last, to_channels_last(x))}
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4) for name, (model, _) in variants.items()}
    seconds = {name: 0.0 for name in variants}
    for name, (model, batch) in variants.items():  # warm-up: allocator, kernel choice, optimizer state
        time_steps(model, optimizers[name], batch, y, 2, device, amp)
    for _ in range(2):
        for name, (model, batch) in variants.items():
            seconds[name] += time_steps(model, optimizers[name], batch, y, steps, device, amp) / 2
    return {"model": option, "threads": threads, "batch": batch_shape, **seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15, help="timed steps per layout and round")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, torch.get_num_threads()])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=MODELS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", choices=sorted(AMP), default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = wants_cudnn_benchmark(None, False, device)  # a run's default
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    print(f"torch {torch.__version__}, device {device}{gpu}, amp {args.amp}, {args.steps} steps x 2 rounds per layout")
    print(f"{'model':<10} {'threads':>7} {'batch':<20} {'default':>10} {'channels_last':>14} {'ratio':>6}")
    for option in args.models:
        for threads in dict.fromkeys(args.threads):
            r = compare(option, threads, args.steps, device, args.amp)
            print(f"{r['model']:<10} {r['threads']:>7} {str(r['batch']):<20} {r['default'] * 1e3:>8.1f}ms "
                  f"{r['channels_last'] * 1e3:>12.1f}ms {r['default'] / r['channels_last']:>5.2f}x", flush=True)


if __name__ == "__main__":
    main()
