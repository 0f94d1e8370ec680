"""Engine benchmark, two questions measured in one run:

1. Does the data loader keep the model busy? Train iterations/s of `experiment=demo`'s 2d_unet at
   batch 8 on the demo data, fed by the real loader vs by batches pre-loaded in memory (the same
   model step either way). Target: loader / pre-loaded >= 0.95.
2. How long from process start to the first optimizer step, beyond importing torch?
   (`python -m cellmap_train experiment=demo` in a fresh run folder.) Target: <= 3 s.

    python benchmarks/engine.py [--steps 25] [--warmup 5] [--starts 3] [--device cuda] [--amp bf16] [overrides...]

On a GPU, `--device cuda --amp bf16` times the step as the loop runs it there (batches copied
with non_blocking from pinned memory, autocast, a loss read back every step).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate

from cellmap_train.config.location import config_dir
from cellmap_train.engine.channels_last import apply_layout
from cellmap_train.engine.prefetch import DeviceBatches
from cellmap_train.engine.settings import pick_device, set_backends

REPO = Path(__file__).resolve().parents[1]
OVERRIDES = ["experiment=demo", "model=2d_unet", "batch_size=8"]


def build(run_dir: Path, overrides: list[str]):
    """Model, optimizer, criterion and data exactly as `python -m cellmap_train` composes them."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=[f"paths.output_dir={run_dir}", *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    torch.manual_seed(cfg.seed)
    model = instantiate(cfg.model)
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    data = instantiate(cfg.data, datasplit_path=str(run_dir / "datasplit.csv"),
                       train_transforms=instantiate(cfg.transforms.train), val_transforms=instantiate(cfg.transforms.val))
    return model, optimizer, instantiate(cfg.loss), data, instantiate(cfg.trainer)


AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}


def timed_steps(model, optimizer, criterion, batches, steps: int, device: torch.device, amp: str | None,
                channels_last: bool) -> float:
    """Seconds for `steps` optimizer steps: the loop's step (device copy one batch ahead,
    autocast, backward, loss read back, optimizer) without clipping or accumulation."""
    autocast = torch.autocast(device.type, dtype=AMP[amp]) if amp else contextlib.nullcontext()
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    batches = DeviceBatches(batches, device, channels_last)
    start = time.perf_counter()
    for _ in range(steps):
        raw, target = next(batches)
        with autocast:
            loss = criterion(model(raw).float(), target)
        scaler.scale(loss).backward()
        batches.prefetch()  # as the loop does: the next batch is fetched while the device computes
        loss.item()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def loader_vs_preloaded(steps: int, warmup: int, overrides: list[str], device: torch.device, amp: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model, optimizer, criterion, data, settings = build(Path(tmp), overrides)
        set_backends(settings, device)  # as the loop does: threads, cuDNN autotuner
        model.to(device).train()
        channels_last = apply_layout(model, settings.channels_last, device)
        criterion = criterion.to(device) if isinstance(criterion, torch.nn.Module) else criterion
        stream = iter(data.train_loader())
        timed_steps(model, optimizer, criterion, stream, warmup, device, amp, channels_last)  # workers started, caches warm
        # pre-loaded = already where the loader's batches come from (pinned host memory on CUDA)
        preloaded = [next(stream) for _ in range(steps)]
        # alternate the two, twice, so a load change on the shared machine hits both alike
        loader_s = preloaded_s = 0.0
        for _ in range(2):
            loader_s += timed_steps(model, optimizer, criterion, stream, steps, device, amp, channels_last)
            preloaded_s += timed_steps(model, optimizer, criterion, itertools.cycle(preloaded), steps, device, amp,
                                       channels_last)
    n = 2 * steps
    print(f"model: {type(model).__name__} {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
          f"batch {data.batch_size}, input {list(data.input_info.shape)}, device {device}, amp {amp}, "
          f"channels_last {channels_last}, cudnn_benchmark {torch.backends.cudnn.benchmark}, "
          f"{torch.get_num_threads()} torch threads, loader kwargs {data.dataloader_kwargs}")
    print(f"real loader   : {n / loader_s:7.2f} it/s  ({n} steps, {loader_s:.1f} s)")
    print(f"pre-loaded    : {n / preloaded_s:7.2f} it/s  ({n} steps, {preloaded_s:.1f} s)")
    print(f"ratio loader/pre-loaded: {preloaded_s / loader_s:.3f}  (target >= 0.95)")


CHILD = """
import os, sys, time
t0 = time.time()
import torch
t1 = time.time()
import torch._dynamo  # torch.optim imports it when the first optimizer is built: timed apart
t2 = time.time()
from torch.optim.optimizer import register_optimizer_step_post_hook
def first_step(optimizer, args, kwargs):
    print(f"TIMES {t0} {t1} {t2} {time.time()}", flush=True)
    os._exit(0)
register_optimizer_step_post_hook(first_step)
sys.argv = ["cellmap_train", *sys.argv[1:]]
from cellmap_train.train import main
main()
"""


def start_to_first_step(starts: int, overrides: list[str]) -> None:
    rows = []
    for i in range(starts):
        with tempfile.TemporaryDirectory() as tmp:
            launched = time.time()
            proc = subprocess.run([sys.executable, "-c", CHILD, *overrides, f"hydra.run.dir={tmp}/run"],
                                  cwd=tmp, capture_output=True, text=True, timeout=600)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("TIMES ")), None)
        if line is None:
            sys.exit(f"run {i} never reached an optimizer step:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        t0, t1, t2, first = map(float, line.split()[1:])
        rows.append((first - launched, t1 - t0, t2 - t1, first - launched - (t2 - t0)))
    for total, torch_import, dynamo_import, beyond in rows:
        print(f"process start -> first optimizer step: {total:5.2f} s  (import torch {torch_import:4.2f} s, "
              f"its torch._dynamo {dynamo_import:4.2f} s, beyond both {beyond:4.2f} s)")
    print(f"median beyond importing torch and torch._dynamo: {statistics.median(r[3] for r in rows):.2f} s; "
          f"beyond torch alone: {statistics.median(r[2] + r[3] for r in rows):.2f} s  (target <= 3 s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=25, help="timed steps per variant and round (0: skip)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--starts", type=int, default=3, help="process starts to time (0: skip)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: what the loop picks)")
    parser.add_argument("--amp", choices=sorted(AMP), default=None, help="autocast dtype (default: float32)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides added after " + " ".join(OVERRIDES))
    args = parser.parse_args()
    overrides = [*OVERRIDES, *args.overrides]
    device = pick_device(args.device)
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(f"cellmap_train engine benchmark: torch {torch.__version__}, {os.cpu_count()} CPUs{gpu}, overrides {overrides}")
    if args.steps:
        loader_vs_preloaded(args.steps, args.warmup, overrides, device, args.amp)
    if args.starts:
        start_to_first_step(args.starts, [*overrides, *([f"device={args.device}"] if args.device else []),
                                          *([f"trainer.amp={args.amp}"] if args.amp else [])])


if __name__ == "__main__":
    main()
