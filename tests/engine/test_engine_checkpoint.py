"""Checkpoint files: choosing latest/best among real files and event logs, atomic writes, refusals."""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils.tensorboard import SummaryWriter

from cellmap_train import load_best_val, load_latest
from cellmap_train.engine.checkpoint import prune_checkpoints, save_checkpoint
from cellmap_train.engine.checkpointer import Checkpointer
from cellmap_train.errors import CheckpointError


def weights(seed: int) -> dict:
    torch.manual_seed(seed)
    return torch.nn.Linear(3, 2).state_dict()


def full_checkpoint(seed: int, epoch: int) -> dict:
    return {"model": weights(seed), "optimizer": {}, "epoch": epoch, "step": epoch * 10}


@pytest.fixture
def checkpoints(tmp_path):
    """Epochs 2, 9, 10 (bare state dicts, 10 a full checkpoint), mtimes newest-first for the lowest epoch."""
    folder = tmp_path / "checkpoints"
    for epoch, mtime in [(10, 1_000), (9, 2_000), (2, 3_000)]:
        state = full_checkpoint(epoch, epoch) if epoch == 10 else weights(epoch)
        path = save_checkpoint(state, folder / f"net_{epoch}.pth")
        os.utime(path, (mtime, mtime))
    return folder


def find_checkpoint(settings):
    return Checkpointer.from_settings(settings).find()


def write_scalars(log_dir, tag: str, values: dict[int, float]) -> None:
    with SummaryWriter(str(log_dir)) as writer:
        for step, value in values.items():
            writer.add_scalar(tag, value, step)


def test_load_latest_takes_the_highest_epoch_in_the_name_not_the_newest_file(checkpoints):
    model = torch.nn.Linear(3, 2)
    assert load_latest(str(checkpoints / "net_{epoch}.pth"), model) == 10
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights(10).items())
    assert load_latest(str(checkpoints / "other_{epoch}.pth"), model) is None


def test_load_latest_fills_model_name(checkpoints):
    assert load_latest(str(checkpoints / "{model_name}_{epoch}.pth"), torch.nn.Linear(3, 2), model_name="net") == 10


def test_load_best_val_reads_the_event_files_of_every_run(tmp_path, checkpoints):
    logs = tmp_path / "tensorboard"
    write_scalars(logs, "loss/val", {10: 0.9, 2: 0.5, 9: 0.7})     # first run, steps out of order
    write_scalars(logs, "loss/val", {2: 0.8, 9: 0.3})              # a resumed run rewrote epochs 2 and 9
    model = torch.nn.Linear(3, 2)
    assert load_best_val(str(logs), str(checkpoints / "net_{epoch}.pth"), model) == 9
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights(9).items())
    assert load_best_val(str(logs), str(checkpoints / "net_{epoch}.pth"), model, low_is_best=False) == 10


def test_load_best_val_accepts_the_challenges_tag_and_skips_deleted_epochs(tmp_path, checkpoints):
    logs = tmp_path / "tensorboard"
    write_scalars(logs, "validation", {1: 0.1, 2: 0.4, 9: 0.2, 10: 0.6})  # epoch 1's file was pruned
    model = torch.nn.Linear(3, 2)
    assert load_best_val(str(logs), str(checkpoints / "net_{epoch}.pth"), model, tag="validation") == 9
    assert load_best_val(str(logs), str(checkpoints / "net_{epoch}.pth"), model) is None  # no loss/val logged
    assert load_best_val(str(tmp_path / "nowhere"), str(checkpoints / "net_{epoch}.pth"), model) is None


def test_load_best_val_smoothing_window(tmp_path, checkpoints):
    logs = tmp_path / "tensorboard"
    write_scalars(logs, "loss/val", {1: 0.5, 2: 0.1, 3: 0.9, 8: 0.3, 9: 0.3, 10: 0.3})
    model = torch.nn.Linear(3, 2)
    assert load_best_val(str(logs), str(checkpoints / "net_{epoch}.pth"), model) == 2
    # averaged over 3 epochs, the single good epoch 2 loses to the steady run at the end
    assert load_best_val(str(logs), str(checkpoints / "net_{epoch}.pth"), model, smoothing_window=3) == 9


def test_load_model_best_uses_best_metric_or_its_ema(tmp_path, make_settings):
    for epoch in (1, 2, 3):
        save_checkpoint(full_checkpoint(epoch, epoch), tmp_path / "checkpoints" / f"tiny_{epoch}.pth")
    write_scalars(tmp_path / "tensorboard" / "tiny", "dice/mean", {1: 0.2, 2: 0.9, 3: 0.5})
    write_scalars(tmp_path / "tensorboard" / "tiny", "dice/mean_ema", {1: 0.2, 2: 0.27, 3: 0.3})
    assert find_checkpoint(make_settings(load_model="best"))[0] == 2
    assert find_checkpoint(make_settings(load_model="best", best_metric_ema=0.9))[0] == 3
    # the challenge's smoothing_window: epoch 3's mean of (0.9, 0.5, 0.5) beats epoch 2's (0.2, 0.9, 0.5)
    assert find_checkpoint(make_settings(load_model="best", smoothing_window=3))[0] == 3
    assert find_checkpoint(make_settings(load_model="latest"))[0] == 3


def test_truncated_checkpoint_is_refused_with_its_name(checkpoints):
    path = checkpoints / "net_10.pth"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="net_10.pth"):
        load_latest(str(checkpoints / "net_{epoch}.pth"), torch.nn.Linear(3, 2))


def test_checkpoint_of_another_model_is_refused_with_its_name(checkpoints):
    with pytest.raises(CheckpointError, match=r"net_10.pth: does not match the model"):
        load_latest(str(checkpoints / "net_{epoch}.pth"), torch.nn.Linear(4, 2))


def test_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = save_checkpoint({"epoch": 1}, tmp_path / "net_1.pth")
    before = path.read_bytes()
    with pytest.raises(Exception):
        save_checkpoint({"epoch": 2, "bad": lambda: None}, path)  # a lambda cannot be pickled
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["net_1.pth"]


def test_prune_keeps_the_newest_and_the_best(checkpoints):
    template = str(checkpoints / "net_{epoch}.pth")
    assert prune_checkpoints(template, "", None, keep=[2]) == []
    removed = prune_checkpoints(template, "", keep_last=1, keep=[2])
    assert [p.name for p in removed] == ["net_9.pth"]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["net_10.pth", "net_2.pth"]
