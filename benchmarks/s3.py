"""S3 request benchmark: the same short demo run streamed from a local S3 server (moto, on
127.0.0.1) with the shipped storage options and with s3fs's default `max_concurrency` (10), in
one run, alternated. Counted from the server's request log: requests by method, and the run's
wall time.

Above 1, s3fs asks every file's size (a HEAD) before it reads it, to split large files into
concurrent ranges; zarr chunks are far below that size, so each read paid a round trip for
nothing. On a real bucket every request is one: 20-100 ms from outside its region.

    python benchmarks/s3.py [--steps 2] [--repeats 2]

Needs the test extra (moto[server]).
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cellmap_train.data.local_s3 import demo_bucket, requests_in, settled_lines

VARIANTS = {"shipped (max_concurrency=1)": [], "s3fs default (max_concurrency=10)": ["data.storage_options.max_concurrency=10"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2, help="training steps of the run (one epoch)")
    parser.add_argument("--repeats", type=int, default=2, help="alternated rounds of both variants")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, demo_bucket(Path(tmp)) as (url, log):
        tmp = Path(tmp)
        env = {**os.environ, "AWS_ENDPOINT_URL": url, "CELLMAP_TRAIN_DEMO_DIR": str(tmp / "demo")}
        print(f"demo run from S3 (moto on 127.0.0.1): 1 epoch x {args.steps} steps, one validation batch")
        results = collections.defaultdict(list)
        for repeat in range(args.repeats):
            for name, overrides in VARIANTS.items():
                before = len(log.read_text().splitlines())
                start = time.perf_counter()
                proc = subprocess.run([sys.executable, "-m", "cellmap_train", "experiment=demo", "data=cellmap_s3",
                                       "paths.s3_dir=s3://cellmap-demo", "epochs=1", f"iterations_per_epoch={args.steps}",
                                       "validation_batch_limit=1", "trainer.progress_bar=false",
                                       f"hydra.run.dir={tmp / f'run-{repeat}-{len(results[name])}-{name[:7]}'}", *overrides],
                                      cwd=tmp, env=env, capture_output=True, text=True)
                took = time.perf_counter() - start
                if proc.returncode != 0:
                    sys.exit(f"{name}: run failed\n{proc.stderr[-2000:]}")
                counts = collections.Counter(method for method, _ in requests_in(settled_lines(log)[before:]))
                results[name].append((took, counts))
                print(f"  {name:36s} {took:6.1f} s   {sum(counts.values()):5d} requests "
                      f"({', '.join(f'{m} {n}' for m, n in sorted(counts.items()))})", flush=True)
    (shipped, default) = (results[name] for name in VARIANTS)
    requests = sum(sum(c.values()) for _, c in shipped) / sum(sum(c.values()) for _, c in default)
    seconds = sum(t for t, _ in shipped) / sum(t for t, _ in default)
    print(f"  ratio shipped / s3fs default: requests {requests:.2f}, wall time {seconds:.2f}")


if __name__ == "__main__":
    main()
