"""DistributedDataParallel under torchrun: 2 gloo processes on CPU."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from cellmap_train.data.dataset import CountingSampler, ShardedBatches
from cellmap_train.engine.checkpoint import read_checkpoint
from cellmap_train.engine.pause_hook import ENV, MARKER


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


def test_ranks_validate_every_world_size_th_batch_of_the_single_process_order():
    alone = list(ShardedBatches(10, batch_size=4))
    assert alone == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    ranks = [list(ShardedBatches(10, batch_size=4, rank=r, world_size=2)) for r in (0, 1)]
    assert ranks == [[alone[0], alone[2]], [alone[1]]] and [len(ShardedBatches(10, 4, r, 2)) for r in (0, 1)] == [2, 1]
    assert list(ShardedBatches(3, batch_size=4, rank=1, world_size=2)) == []  # a rank may get none


def run_with_its_processes(command: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run with output captured; a run that outlives `timeout` is killed together with
    every process it started (torchrun's ranks and their loader workers), so a hang leaves none."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


@pytest.mark.slow
def test_two_process_gloo_run_writes_one_set_of_files_and_validates_in_shares(demo_cache, tmp_path):
    # a process says when it validates its 3rd batch: over 2 epochs with a limit of 3, rank 0 takes
    # 2 batches an epoch and rank 1 one, so only rank 0 gets there (each would, validating all 3)
    env = {**os.environ, "CELLMAP_TRAIN_DEMO_DIR": str(demo_cache), "PYTHONUNBUFFERED": "1", ENV: "validation@3:0"}
    proc = run_with_its_processes(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cellmap_train",
         "experiment=demo", "trainer=smoke", "trainer.epochs=2", "model.base_features=4", "model.depth=2",
         "batch_size=2", "trainer.num_threads=1", "trainer.validation_batch_limit=3"],
        cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "DDP: weights identical on all 2 ranks" in proc.stdout
    assert proc.stderr.count(MARKER) == 1, proc.stderr[-3000:]
    assert proc.stdout.count("epoch 2/2: loss/train") == 1  # only rank 0 prints
    runs = [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs  # both ranks agreed on one run folder
    run = runs[0]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["2d_unet_1.pth", "2d_unet_2.pth"]
    writers = {p.name.split(".")[-2] for p in (run / "tensorboard").rglob("events.out.tfevents.*")}
    assert len(writers) == 1  # event files of one process only
    assert (run / "result.json").is_file() and (run / "datasplit.csv").is_file()
    assert (run / "train.log").read_text().count("epoch 2/2: loss/train") == 1  # rank 0 writes the run's log
    # the ranks validated batches 0, 2 and 1 of the set and added up what they measured: the same
    # as one process validating those weights on the first 3 batches
    checkpoint = read_checkpoint(run / "checkpoints" / "2d_unet_2.pth")
    alone = validate_alone(run, checkpoint)
    assert checkpoint["metrics"]["val/batches"] == alone.batches == 3
    for name, value in alone.metrics.items():
        assert checkpoint["metrics"][name] == pytest.approx(value, rel=1e-5, nan_ok=True), name


def validate_alone(run, checkpoint: dict):
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from cellmap_train.engine.channels_last import apply_layout
    from cellmap_train.engine.validate import validate
    from cellmap_train.config.build import build_model

    cfg = OmegaConf.create(checkpoint["config"])
    model = build_model(cfg.model, cfg.get("model_kwargs"))
    model.load_state_dict(checkpoint["model"])
    cpu = torch.device("cpu")
    channels_last = apply_layout(model, cfg.trainer.channels_last, cpu)  # as the run did
    data = instantiate(cfg.data, datasplit_path=run / "datasplit.csv", val_transforms=instantiate(cfg.transforms.val))
    return validate(model, data.val_loader(), instantiate(cfg.loss), data.classes, cpu,
                    batch_limit=cfg.trainer.validation_batch_limit, channels_last=channels_last)
