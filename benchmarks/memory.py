"""Memory benchmark: what a training step takes on the CPU against what the preflight expects
before any data is read, side by side for the shipped models in one run.

    python benchmarks/memory.py [--steps 2] [--big] [--cases "experiment=demo batch_size=64" ...]

Each case runs in a process of its own: it composes the config, asks the preflight for its
figures (the layer outputs of a batch from the meta-device run, the weights, the optimizer's
copies of them), then builds the model and optimizer as a run does (channels-last on the CPU,
autocast with `trainer.amp`), takes `--steps` steps on random batches and reads its peak resident
memory (ru_maxrss) over what it held before the model was built. Printed per case:
- `floor`: the model's part of the preflight's lower bound, layer outputs + weights x (2 + the
  optimizer's copies) (the preflight adds the DataLoader's batches in flight, which these steps,
  on batches made in place, do not hold); `outputs only`: the bound before weights, gradients
  and optimizer state were counted;
- `peak / floor` and `peak / outputs only`: at least 1 where the bound is a bound;
- `factor`: (peak - weights part) / layer outputs, what STEP_OVERHEAD in preflight.py brackets.
`--big` adds experiment=train_3D at batch_size=1 (about 8 GiB, minutes on a CPU).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIB = 2**20
CASES = [  # the demo as shipped, then batches large enough that layer outputs outweigh a process's fixed cost
    "experiment=demo",
    "experiment=demo model=3d_resnet batch_size=2",
    "experiment=demo batch_size=64",
    "experiment=demo batch_size=64 trainer.amp=bf16",
    "experiment=demo model=2d_resnet batch_size=64",
    "experiment=demo model=vitnet batch_size=32",
    "experiment=demo model=3d_unet batch_size=16",
    "experiment=train_2D batch_size=1",
    "experiment=train_2D batch_size=4",
    "experiment=train_2D batch_size=8",
    "experiment=train_2D batch_size=4 optimizer=sgd optimizer.momentum=0 optimizer.nesterov=false",
    "experiment=train_2D batch_size=4 trainer.amp=bf16",
]
DOMINANT = 50 * MIB  # layer outputs from which the factor is read: below, the fixed cost of a process weighs
BIG = ["experiment=train_3D batch_size=1"]


def resident_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from cellmap_train.config.location import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = hydra_compose("config", overrides=["paths.output_dir=.", "device=cpu", *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # ${hydra:...} interpolations need it
    return cfg


def measure(overrides: list[str], steps: int) -> dict:
    """One case, in this process: the preflight's figures, then the peak of real steps."""
    import contextlib

    import torch
    from hydra.utils import instantiate

    from cellmap_train.engine.channels_last import apply_layout, to_channels_last
    from cellmap_train.config.build import build_model
    from cellmap_train.config.preflight import check_optimizer_and_scheduler, meta_forward, model_bytes

    cfg = compose(overrides)
    copies = check_optimizer_and_scheduler(cfg)
    outputs, weights = model_bytes(cfg, meta_forward(cfg), copies)
    amp = cfg.trainer.get("amp")

    torch.manual_seed(0)
    before = resident_bytes()
    model = build_model(cfg.model, cfg.get("model_kwargs"))
    channels_last = apply_layout(model, cfg.trainer.get("channels_last"), torch.device("cpu"))
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    criterion = instantiate(cfg.loss, **({"pos_weight": None} if cfg.loss.get("pos_weight") == "auto" else {}))  # no data here
    shape = list(cfg.input_array_info.shape)
    spatial = shape[1:] if shape[0] == 1 else shape
    autocast = torch.autocast("cpu", dtype=getattr(torch, {"bf16": "bfloat16", "fp16": "float16"}[amp])) if amp \
        else contextlib.nullcontext()
    for _ in range(steps):
        batch = torch.rand(int(cfg.batch_size), int(cfg.model.get("in_channels", 1)), *spatial)
        batch = to_channels_last(batch) if channels_last else batch
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            logits = model(batch)
        target = (torch.rand(logits.shape) > 0.5).float()
        criterion(logits.float(), target).backward()
        optimizer.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before  # kB on Linux
    return {"model": cfg.model_name, "batch": int(cfg.batch_size), "optimizer": cfg.optimizer._target_.split(".")[-1],
            "copies": copies, "outputs": outputs, "weights": weights, "peak": peak}


def run_case(case: str, steps: int) -> dict:
    done = subprocess.run([sys.executable, __file__, "--case", case, "--steps", str(steps)], cwd=REPO,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{case}: {done.stderr.strip().splitlines()[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2, help="training steps per case (the first makes the optimizer's state)")
    parser.add_argument("--big", action="store_true", help="add experiment=train_3D at batch_size=1")
    parser.add_argument("--cases", nargs="+", default=CASES, help="override lists to measure instead of the shipped set")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one case, in the process run_case starts
    args = parser.parse_args()
    if args.case is not None:
        print(json.dumps(measure(args.case.split(), args.steps)))
        return
    print(f"{'case':<86} {'outputs':>8} {'weights':>8} {'peak':>8}  {'peak/floor':>10} {'peak/outputs only':>17} {'factor':>6}")
    factors = []
    for case in args.cases + (BIG if args.big else []):
        row = run_case(case, args.steps)
        floor = row["outputs"] + row["weights"]
        factor = (row["peak"] - row["weights"]) / row["outputs"]
        if row["outputs"] >= DOMINANT:
            factors.append(factor)
        label = f"{case} ({row['optimizer']}, {row['copies']} copies)"
        print(f"{label:<86} {row['outputs'] / MIB:>7.0f}M {row['weights'] / MIB:>7.0f}M {row['peak'] / MIB:>7.0f}M  "
              f"{row['peak'] / floor:>10.2f} {row['peak'] / row['outputs']:>17.2f} {factor:>6.2f}", flush=True)
    if factors:
        print(f"activation factor where layer outputs reach {DOMINANT // MIB} MiB: {min(factors):.2f}-{max(factors):.2f}")


if __name__ == "__main__":
    main()
