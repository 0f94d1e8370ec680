"""A run stopped by a signal and resumed is one run in its record: its first epoch's metrics,
the loss/train_smooth curve and its training time go on across the processes; checkpoints
written before these fields existed still resume. A changed lr is said and applied."""

from __future__ import annotations

import math

import pytest
import torch

from cellmap_train.engine import fit
from cellmap_train.engine.checkpoint import read_checkpoint, save_checkpoint
from cellmap_train.engine.losses import MaskedBCELoss
from cellmap_train.errors import TrainingInterrupted
from cellmap_train.host.stop_request import StopRequest
from engine_helpers import fit_tiny

TIMING = {"throughput/samples_per_s"}


class Scalars:
    """A logger that keeps every scalar: {tag: {step: value}}."""

    def __init__(self):
        self.values: dict[str, dict[int, float]] = {}

    def scalars(self, values, step):
        for tag, value in values.items():
            self.values.setdefault(tag, {})[step] = float(value)

    def images(self, *args):
        pass

    def flush(self):
        pass


class StopAfter(StopRequest):
    """A Ctrl-C that arrives during optimizer step `steps` (the loop asks once per step)."""

    def __init__(self, steps: int):
        super().__init__()
        self.asked = 0
        self.steps = steps

    @property
    def requested(self) -> bool:
        self.asked += 1
        if self.asked >= self.steps:
            self.signal_name = "SIGINT"
        return self.signal_name is not None


def without_timing(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING}


def stopped_then_resumed(settings, model_maker, data, steps: int, logger: Scalars):
    """A run stopped at optimizer step `steps`, then continued with load_model=latest: (the
    stopped run's result, its checkpoint, the resumed run's result)."""
    model = model_maker()
    with pytest.raises(TrainingInterrupted) as stopped:
        fit(settings(), model, torch.optim.AdamW(model.parameters(), lr=1e-2), None, MaskedBCELoss(), data, logger,
            stop=StopAfter(steps))
    partial = read_checkpoint(stopped.value.result.checkpoint)  # before the resumed run replaces it
    resumed = fit_tiny(settings(load_model="latest"), model_maker(), data, logger=logger)
    return stopped.value.result, partial, resumed


def test_a_resumed_run_keeps_its_first_epoch_its_smoothed_loss_and_its_time(tiny_data, conv_model, make_settings,
                                                                           tmp_path_factory):
    straight_log, resumed_log = Scalars(), Scalars()
    straight = fit_tiny(make_settings(epochs=3, run_dir=str(tmp_path_factory.mktemp("straight"))), conv_model(),
                        tiny_data, logger=straight_log)
    folder = str(tmp_path_factory.mktemp("resumed"))
    settings = lambda **more: make_settings(epochs=3, run_dir=folder, **more)  # noqa: E731
    before, partial, resumed = stopped_then_resumed(settings, conv_model, tiny_data, steps=3, logger=resumed_log)  # epoch 2, step 1

    assert before.epochs_done == 1 and resumed.epochs_done == 3
    assert resumed.first_epoch == straight.first_epoch == 1
    assert without_timing(resumed.first_metrics) == without_timing(straight.first_metrics)
    assert resumed_log.values["loss/train_smooth"] == pytest.approx(straight_log.values["loss/train_smooth"])
    assert resumed.earlier_wall_time_s == partial["wall_time_s"] > 0
    assert resumed.wall_time_s > resumed.earlier_wall_time_s
    assert read_checkpoint(resumed.checkpoint)["wall_time_s"] == pytest.approx(resumed.wall_time_s, abs=1.0)


def test_a_checkpoint_written_before_these_fields_still_resumes(tiny_data, conv_model, make_settings, tmp_path):
    fit_tiny(make_settings(epochs=1), conv_model(), tiny_data)
    path = tmp_path / "checkpoints" / "tiny_1.pth"
    old = {k: v for k, v in read_checkpoint(path).items()
           if k not in {"loss_smoothing", "first_metrics", "first_epoch", "wall_time_s", "batch_size"}}
    save_checkpoint(old, path)
    log = Scalars()
    resumed = fit_tiny(make_settings(epochs=2, load_model="latest"), conv_model(), tiny_data, logger=log)
    assert resumed.epochs_done == 2 and resumed.earlier_wall_time_s == 0.0
    assert resumed.first_epoch == 2 and resumed.first_metrics["dice/mean"] == resumed.final_metrics["dice/mean"]
    smooth = log.values["loss/train_smooth"]
    assert smooth[3] == pytest.approx(log.values["loss/train"][3])  # the smoothing starts again, bias-corrected


def fit_with_lr(settings, model, data, lr: float, scheduler=None, logger=None):
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    return fit(settings, model, optimizer, scheduler(optimizer) if scheduler else None, MaskedBCELoss(), data, logger,
               config={"lr": lr, "batch_size": data.batch_size})


def test_an_lr_changed_on_resume_is_said_and_becomes_the_base_rate(tiny_data, conv_model, make_settings, tmp_path,
                                                                   capsys):
    cosine = lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)  # noqa: E731
    fit_with_lr(make_settings(epochs=1), conv_model(), tiny_data, 1e-2, cosine)
    capsys.readouterr()
    log = Scalars()
    fit_with_lr(make_settings(epochs=2, load_model="latest"), conv_model(), tiny_data, 1e-3, cosine, logger=log)
    out = capsys.readouterr().out
    assert "lr=0.001 (the checkpoint was trained with lr=0.01): 0.001 is used as the new base rate" in out
    reference = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    schedule = cosine(reference)
    reference.step()
    schedule.step()  # the position the checkpoint of epoch 1 was at
    assert log.values["lr"][3] == pytest.approx(reference.param_groups[0]["lr"])
    state = read_checkpoint(tmp_path / "checkpoints" / "tiny_2.pth")
    assert state["scheduler"]["base_lrs"] == pytest.approx([1e-3])


def test_the_same_lr_on_resume_says_nothing_and_the_checkpoints_state_is_used(tiny_data, conv_model, make_settings,
                                                                               tmp_path, capsys):
    fit_with_lr(make_settings(epochs=1), conv_model(), tiny_data, 1e-2)
    fit_with_lr(make_settings(epochs=2, load_model="latest"), conv_model(), tiny_data, 1e-2)
    out = capsys.readouterr().out
    assert "Resumed from" in out and "base rate" not in out and "batch_size=" not in out
    assert math.isclose(read_checkpoint(tmp_path / "checkpoints" / "tiny_2.pth")["optimizer"]["param_groups"][0]["lr"],
                        1e-2)
