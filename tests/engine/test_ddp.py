"""DistributedDataParallel under torchrun: 2 gloo processes on CPU."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cellmap_train.data.dataset import CountingSampler


def take(sampler, count):
    stream = iter(sampler)
    return [next(stream) for _ in range(count)]


def test_ranks_draw_disjoint_sample_streams():
    rank0, rank1 = (take(CountingSampler(0, batch_size=4, rank=r, world_size=2), 12) for r in (0, 1))
    assert not set(rank0) & set(rank1)
    assert sorted(rank0 + rank1) == list(range(24))
    # a single process sees the plain stream, and a resumed one continues it
    assert take(CountingSampler(8, batch_size=4), 4) == [8, 9, 10, 11]
    assert take(CountingSampler(4, batch_size=4, rank=1, world_size=2), 4) == take(CountingSampler(0, 4, 1, 2), 8)[4:]


@pytest.mark.slow
def test_two_process_gloo_run_writes_one_set_of_files(demo_cache, tmp_path):
    env = {**os.environ, "CELLMAP_TRAIN_DEMO_DIR": str(demo_cache), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cellmap_train",
         "experiment=demo", "trainer=smoke", "trainer.epochs=2", "model.base_features=4", "model.depth=2",
         "batch_size=2", "trainer.num_threads=1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "DDP: weights identical on all 2 ranks" in proc.stdout
    assert proc.stdout.count("epoch 2/2: loss/train") == 1  # only rank 0 prints
    runs = [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs  # both ranks agreed on one run folder
    run = runs[0]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["2d_unet_1.pth", "2d_unet_2.pth"]
    writers = {p.name.split(".")[-2] for p in (run / "tensorboard").rglob("events.out.tfevents.*")}
    assert len(writers) == 1  # event files of one process only
    assert (run / "result.json").is_file() and (run / "datasplit.csv").is_file()

