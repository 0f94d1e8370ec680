"""S3 benchmarks against a local S3 server (moto, on 127.0.0.1) holding the demo data, each
side by side in one run, alternated:

1. Start-up: opening the demo crops (CellMapData, datasplit written) one at a time and
   `open_threads` at once, through a relay that makes each request `--latency-ms` late, as a
   distant bucket does (20-100 ms from outside its region; on 127.0.0.1 a request is ~2 ms).
2. Samples: reading `--batches` batches of 8 training samples (raw + 3 classes, chunk cache off)
   through the same relay, the chunks fetched array by array (as before), sample by sample, and
   for the whole batch at once (ngff.fetch_together; what DataLoader workers do).
3. Requests: the same short demo run with the shipped storage options and with s3fs's default
   `max_concurrency` (10); requests by method, counted from the server's log, and wall time.
   Above 1, s3fs asks every file's size (a HEAD) before it reads it, to split large files into
   concurrent ranges; zarr chunks are far below that size, so each read paid a round trip.

    python benchmarks/s3.py [--steps 2] [--repeats 2] [--latency-ms 30] [--open-threads 16] [--batches 3]

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

from cellmap_train.data.local_s3 import Relay, demo_bucket, requests_in, settled_lines

VARIANTS = {"shipped (max_concurrency=1)": [], "s3fs default (max_concurrency=10)": ["data.storage_options.max_concurrency=10"]}


def shipped_storage_options(endpoint: str) -> dict:
    """conf/data/cellmap.yaml's storage options, pointed at `endpoint`."""
    from omegaconf import OmegaConf

    options = OmegaConf.to_container(OmegaConf.load(Path(__file__).parents[1] / "conf/data/cellmap.yaml").storage_options)
    return {**options, "client_kwargs": {"endpoint_url": endpoint}}


def demo_data(tmp: Path, storage_options: dict, **kwargs):
    """CellMapData over the bucket's demo crops (nuc, er, mito; 1x96x96 at 8 nm), the datasplit in `tmp`."""
    from cellmap_train.data import CellMapData

    return CellMapData("s3://cellmap-demo", tmp / "datasplit.csv", ["nuc", "er", "mito"], validation_prob=0.3,
                       input_array_info={"shape": [1, 96, 96], "scale": [8, 8, 8]},
                       storage_options=storage_options, **kwargs)


def request_counts(url: str, log: Path, tmp: Path, steps: int, repeats: int) -> None:
    env = {**os.environ, "AWS_ENDPOINT_URL": url, "CELLMAP_TRAIN_DEMO_DIR": str(tmp / "demo")}
    print(f"demo run from S3 (moto on 127.0.0.1): 1 epoch x {steps} steps, one validation batch")
    results = collections.defaultdict(list)
    for repeat in range(repeats):
        for name, overrides in VARIANTS.items():
            before = len(log.read_text().splitlines())
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "cellmap_train", "experiment=demo", "data=cellmap_s3",
                                   "paths.s3_dir=s3://cellmap-demo", "epochs=1", f"iterations_per_epoch={steps}",
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


def open_times(url: str, log: Path, tmp: Path, latency_ms: float, threads: int, repeats: int) -> None:
    relay = Relay(url, delay=latency_ms / 1000)
    options = shipped_storage_options(relay.url)

    def open_crops(open_threads: int) -> tuple[float, int, int]:
        before = len(log.read_text().splitlines())
        start = time.perf_counter()
        data = demo_data(tmp, options, open_threads=open_threads)
        took = time.perf_counter() - start
        return took, len(data.train_set.crops) + len(data.val_set.crops), len(requests_in(settled_lines(log)[before:]))

    open_crops(threads)  # writes the datasplit: what follows only opens the crops
    print(f"opening the demo crops from S3, each request {latency_ms:g} ms late (a relay before moto):")
    results = collections.defaultdict(list)
    for _ in range(repeats):
        for open_threads in (1, threads):
            took, crops, requests = open_crops(open_threads)
            results[open_threads].append(took)
            print(f"  open_threads={open_threads:<3d} {took:6.2f} s   {crops} crops, {requests} requests", flush=True)
    relay.close()
    print(f"  ratio open_threads={threads} / 1: {sum(results[threads]) / sum(results[1]):.2f}")


def sample_times(url: str, tmp: Path, latency_ms: float, batches: int, repeats: int) -> None:
    from cellmap_train.data import dataset

    relay = Relay(url, delay=latency_ms / 1000)
    data = demo_data(tmp, shipped_storage_options(relay.url), batch_size=8, chunk_cache_mb=0)
    together, train_set = dataset.fetch_together, data.train_set
    variants = {  # how the chunks of a batch of 8 samples are fetched
        "each array apart (as before)": lambda batch: [train_set[i] for i in batch],
        "each sample's arrays together": lambda batch: [train_set[i] for i in batch],
        "the whole batch together": train_set.__getitems__,
    }

    def read_batches(name: str) -> float:
        dataset.fetch_together = (lambda reads: {}) if name.startswith("each array") else together
        start = time.perf_counter()
        for b in range(batches):
            variants[name](list(range(8 * b, 8 * b + 8)))
        return (time.perf_counter() - start) / batches

    print(f"reading {batches} batches of 8 2D samples (raw + 3 classes, no chunk cache), each request {latency_ms:g} ms late:")
    results = collections.defaultdict(list)
    try:
        for _ in range(repeats):
            for name in variants:
                results[name].append(read_batches(name))
                print(f"  {name:30s} {results[name][-1] * 1000:6.0f} ms per batch", flush=True)
    finally:
        dataset.fetch_together = together
        relay.close()
    base = sum(results["each array apart (as before)"])
    print("  ratio to each array apart: " + ", ".join(f"{name} {sum(times) / base:.2f}" for name, times in results.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2, help="training steps of the run (one epoch)")
    parser.add_argument("--repeats", type=int, default=2, help="alternated rounds of each part's variants")
    parser.add_argument("--latency-ms", type=float, default=30, help="delay the relay adds to each request")
    parser.add_argument("--open-threads", type=int, default=16, help="data.open_threads of the concurrent variant")
    parser.add_argument("--batches", type=int, default=3, help="batches of 8 read per round of the sample benchmark")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, demo_bucket(Path(tmp)) as (url, log):
        open_times(url, log, Path(tmp), args.latency_ms, args.open_threads, args.repeats)
        sample_times(url, Path(tmp), args.latency_ms, args.batches, args.repeats)
        request_counts(url, log, Path(tmp), args.steps, args.repeats)


if __name__ == "__main__":
    main()
