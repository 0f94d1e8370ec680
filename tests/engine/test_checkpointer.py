"""The Checkpointer without a training run: finding, refusing to overwrite, init_from when the run
continues from its own checkpoint, and a changed base rate that keeps the schedule's position."""

from __future__ import annotations

import pytest
import torch

from cellmap_train.engine.checkpoint import save_checkpoint
from cellmap_train.engine.checkpointer import Checkpointer
from cellmap_train.engine.resume_changes import changed_on_resume, set_base_lr
from cellmap_train.engine.schedulers import WarmupCosineLR
from cellmap_train.errors import ConfigError


def full(epoch: int) -> dict:
    return {"model": torch.nn.Linear(2, 2).state_dict(), "optimizer": {}, "epoch": epoch, "step": epoch}


@pytest.fixture
def folder(tmp_path):
    for epoch in (2, 10):
        save_checkpoint(full(epoch), tmp_path / "checkpoints" / f"net_{epoch}.pth")
    return tmp_path


def test_latest_is_the_highest_epoch_and_a_fresh_run_refuses_to_overwrite(folder):
    checkpointer = Checkpointer(folder / "checkpoints" / "{model_name}_{epoch}.pth", "net", load_model="latest")
    assert checkpointer.find() == (10, folder / "checkpoints" / "net_10.pth")
    assert list(checkpointer.epochs()) == [2, 10]
    with pytest.raises(ConfigError, match=r"already holds checkpoints of an earlier run \(epochs 2..10\)"):
        checkpointer.refuse_overwrite()
    Checkpointer(folder / "checkpoints" / "{model_name}_{epoch}.pth", "other").refuse_overwrite()  # nothing of it


def test_init_from_is_not_used_when_the_run_continues_from_its_own_checkpoint(folder):
    checkpointer = Checkpointer(folder / "checkpoints" / "{model_name}_{epoch}.pth", "net", load_model="latest")
    never = lambda source: pytest.fail("init_from was looked up")  # noqa: E731
    line = checkpointer.init_from(torch.nn.Linear(2, 2), "elsewhere", never, ["a"], None)
    assert line == f"init_from=elsewhere not used: the run continues from its own checkpoint {folder}/checkpoints/net_10.pth."


SCHEDULES = {
    "cosine": lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10),
    "step": lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
    "one_cycle": lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=opt.param_groups[0]["lr"], total_steps=10),
    "warmup_cosine": lambda opt: WarmupCosineLR(opt, epochs=2, steps_per_epoch=5, warmup_pct=0.4),
}


@pytest.mark.parametrize("name", SCHEDULES)
def test_a_new_base_rate_keeps_the_schedules_position(name):
    """A schedule run 3 steps at lr 1, then given base rate 4, continues as one started at 4."""
    def at(lr: float, steps: int):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
        scheduler = SCHEDULES[name](optimizer)
        for _ in range(steps):
            optimizer.step()
            scheduler.step()
        return optimizer, scheduler

    changed, changed_schedule = at(1.0, 3)
    set_base_lr(changed, changed_schedule, 4.0, 1.0)
    reference, reference_schedule = at(4.0, 3)
    for _ in range(4):
        assert changed.param_groups[0]["lr"] == pytest.approx(reference.param_groups[0]["lr"])
        for optimizer, scheduler in ((changed, changed_schedule), (reference, reference_schedule)):
            optimizer.step()
            scheduler.step()


def test_a_changed_batch_size_is_said_and_nothing_without_a_config():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    saved = {"config": {"lr": 0.1, "batch_size": 8}, "batch_size": 8}
    assert changed_on_resume(saved, {"lr": 0.1, "batch_size": 4}, optimizer, None, 4) == [
        "batch_size=4 (the checkpoint was trained with batch_size=8): 4 is used from here on"]
    assert changed_on_resume(saved, None, optimizer, None, None) == []  # a notebook's fit(config=None)
    assert optimizer.param_groups[0]["lr"] == 0.1
