"""WarmupCosineLR and the shipped scheduler options that step per epoch or per optimizer step."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate

from cellmap_train.engine.step import steps_scheduler_per_step
from cellmap_train.engine.schedulers import WarmupCosineLR
from cellmap_train.engine.settings import TrainSettings


def optimizer(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def lrs(scheduler, steps: int) -> list[float]:
    seen = []
    for _ in range(steps):
        seen.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return seen


def test_warmup_rises_linearly_then_the_cosine_falls_to_eta_min():
    scheduler = WarmupCosineLR(optimizer(2.0), epochs=4, steps_per_epoch=25, warmup_pct=0.1, eta_min=0.2,
                               warmup_start_factor=0.1)
    seen = lrs(scheduler, 101)
    assert seen[0] == pytest.approx(0.2)  # 0.1 x lr
    assert seen[5] == pytest.approx(2.0 * (0.1 + 0.9 * 5 / 10))
    assert seen[10] == pytest.approx(2.0) and max(seen) == pytest.approx(2.0)  # the peak, at the end of the warm-up
    assert seen[55] == pytest.approx(0.2 + 1.8 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert seen[100] == pytest.approx(0.2)  # the last step, and it stays there
    assert all(a <= b for a, b in zip(seen[:10], seen[1:11])) and all(a >= b for a, b in zip(seen[10:100], seen[11:101]))


def test_a_resumed_schedule_continues_where_it_stopped():
    first = WarmupCosineLR(optimizer(), epochs=2, steps_per_epoch=10)
    lrs(first, 7)
    again = WarmupCosineLR(optimizer(), epochs=2, steps_per_epoch=10)
    again.optimizer.load_state_dict(first.optimizer.state_dict())  # as a resumed run loads both
    again.load_state_dict(first.state_dict())
    assert lrs(again, 5) == lrs(first, 5)


@pytest.mark.parametrize("kwargs", [{"warmup_pct": 1.0}, {"warmup_start_factor": 0}, {"eta_min": -1}, {"epochs": 0}])
def test_bad_values_are_refused(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs)).replace("epochs", "epochs x steps_per_epoch")):
        WarmupCosineLR(optimizer(), **{"epochs": 2, "steps_per_epoch": 10, **kwargs})


@pytest.mark.parametrize("option,per_step", [("warmup_cosine", True), ("poly", False), ("onecycle", True), ("cosine", False)])
def test_shipped_options_step_as_they_need(compose_cfg, option, per_step):
    cfg = compose_cfg("experiment=demo", f"scheduler={option}")
    scheduler = instantiate(cfg.scheduler)(optimizer(cfg.lr))
    assert steps_scheduler_per_step(TrainSettings(), scheduler) is per_step


def test_poly_is_nnunets_decay(compose_cfg):
    cfg = compose_cfg("experiment=demo", "scheduler=poly", "epochs=10")
    scheduler = instantiate(cfg.scheduler)(optimizer(1.0))
    assert lrs(scheduler, 11) == pytest.approx([(1 - epoch / 10) ** 0.9 for epoch in range(11)])
