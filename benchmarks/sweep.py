"""Sweep benchmark: wall time of the same 4-job demo sweep (seed=1,2 x lr=1e-3,3e-3) with
Hydra's basic launcher (jobs one after another in one process) and with the joblib launcher
(2 jobs side by side, each with cores // 2 torch threads: the parallel launcher's default), measured
in one run.

Target: joblib / basic <= 0.6 on 2 cores.

By default each job is `experiment=demo` as shipped (10 epochs x 50 steps, 1-3 minutes alone
depending on the VM; the run takes 4-10 minutes on 2 cores). `--epochs` and `--iterations`
shorten the jobs; the shorter they are, the more the start-up both launchers pay once weighs.

`--repeats N` runs the pair N times, alternated (basic, joblib, basic, joblib, ...), and prints
each pair's ratio and their median: a shared VM's speed drifts over minutes, and a pair measured
back to back sees the least of it.

`--seeds N` sweeps seeds 1..N (N x 2 jobs; the target is set for the default 2, 4 jobs).

    python benchmarks/sweep.py [--epochs 10] [--iterations 50] [--workers 2] [--repeats 1] [--seeds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd


def run_sweep(workdir: Path, launcher: list[str], args) -> tuple[float, pd.DataFrame]:
    size = [f"{key}={value}" for key, value in (("epochs", args.epochs), ("iterations_per_epoch", args.iterations))
            if value is not None]  # none given: the demo's own
    command = [sys.executable, "-m", "cellmap_train", "-m", *launcher, "experiment=demo", *size,
               "trainer.progress_bar=false", f"seed=range(1,{args.seeds + 1})", "lr=1e-3,3e-3", "hydra.sweep.dir=sweep"]
    workdir.mkdir(parents=True)
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"sweep failed ({' '.join(launcher) or 'basic'}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start, pd.read_csv(workdir / "sweep" / "summary.csv")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=None, help="epochs per job (default: the demo's, 10)")
    parser.add_argument("--iterations", type=int, default=None, help="steps per epoch (default: the demo's, 50)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="alternated pairs of sweeps (default 1)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per learning rate (default 2: a 4-job sweep)")
    args = parser.parse_args()
    launchers = [("basic launcher (sequential):", []),
                 (f"joblib launcher ({args.workers} workers):", ["hydra/launcher=parallel", f"hydra.launcher.n_jobs={args.workers}"])]
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("CELLMAP_TRAIN_DEMO_DIR", str(Path(tmp) / "demo"))
        from cellmap_train.data.demo import ensure_demo_data

        ensure_demo_data(os.environ["CELLMAP_TRAIN_DEMO_DIR"])  # made once, outside the timings
        for repeat in range(args.repeats):
            seconds = []
            for i, (name, launcher) in enumerate(launchers):
                took, table = run_sweep(Path(tmp) / f"{repeat}-{i}", launcher, args)
                if repeat == 0 and i == 0:
                    job = table.iloc[0]
                    print(f"{len(table)}-job demo sweep ({job.epochs_done} epochs, {job.steps} steps per job, {os.cpu_count()} CPUs)")
                print(f"  {name:32s} {took:7.1f} s   jobs ok: {(table.status == 'ok').sum()}/{len(table)}   "
                      f"a job: {table.wall_time_s.min():.1f}-{table.wall_time_s.max():.1f} s", flush=True)
                seconds.append(took)
            ratios.append(seconds[1] / seconds[0])
            print(f"  ratio joblib / basic:            {ratios[-1]:7.2f}   (target <= 0.60)", flush=True)
    if args.repeats > 1:
        print(f"  median of {args.repeats} ratios:            {statistics.median(ratios):7.2f}   "
              f"(each: {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
