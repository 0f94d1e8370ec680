"""`fit` in-process on the real demo data at a tiny size: switches, loading rules, progress output."""

from __future__ import annotations

import math

import pytest
import torch

from cellmap_train.engine.checkpoint import read_checkpoint
from cellmap_train.engine.losses import MaskedBCEDiceLoss
from cellmap_train.errors import CheckpointError, ConfigError, TrainingInterrupted
from engine_helpers import fit_tiny


def saved_epochs(tmp_path) -> list[int]:
    return sorted(int(p.stem.split("_")[-1]) for p in (tmp_path / "checkpoints").glob("tiny_*.pth"))


def test_bf16_autocast_with_accumulation_clipping_and_one_cycle(tiny_data, unet_model, make_settings, tmp_path):
    model = unet_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    one_cycle = lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=4)  # noqa: E731
    settings = make_settings(amp="bf16", gradient_accumulation_steps=2, max_grad_norm=1.0)
    result = fit_tiny(settings, model, tiny_data, scheduler=one_cycle, criterion=MaskedBCEDiceLoss(pos_weight=[1, 2, 3]))
    state = read_checkpoint(tmp_path / "checkpoints" / "tiny_2.pth")
    assert (result.epochs_done, result.steps, state["step"]) == (2, 4, 4)
    assert state["scheduler"]["last_epoch"] == 4  # stepped per optimizer step, not per epoch
    assert math.isfinite(result.final_metrics["loss/val"])
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fp16_uses_the_grad_scaler(tiny_data, conv_model, make_settings, tmp_path):
    fit_tiny(make_settings(amp="fp16", epochs=1), conv_model(), tiny_data)
    assert read_checkpoint(tmp_path / "checkpoints" / "tiny_1.pth")["scaler"]["scale"] > 0


def test_keep_last_keeps_the_best_and_early_stopping_stops(tiny_data, conv_model, make_settings, capsys):
    # lr=0: every epoch validates the same, so epoch 1 stays the best and nothing improves after it
    result = fit_tiny(make_settings(epochs=6, keep_last=1, early_stopping_patience=2), conv_model(), tiny_data, lr=0.0)
    assert (result.best_epoch, result.epochs_done, result.stopped_early) == (1, 3, True)
    assert "Early stopping" in capsys.readouterr().out


def test_keep_last_prunes(tiny_data, conv_model, make_settings, tmp_path):
    fit_tiny(make_settings(epochs=3, keep_last=1), conv_model(), tiny_data, lr=0.0)
    assert saved_epochs(tmp_path) == [1, 3]


def test_weights_only_file_initialises_the_model_and_keeps_the_numbering(tiny_data, conv_model, make_settings,
                                                                          tmp_path, capsys, same_state):
    weights = {k: v + 1 for k, v in conv_model().state_dict().items()}
    (tmp_path / "checkpoints").mkdir()
    torch.save(weights, tmp_path / "checkpoints" / "tiny_3.pth")  # the challenge's format
    model = conv_model()
    result = fit_tiny(make_settings(epochs=4, load_model="latest"), model, tiny_data, lr=0.0)
    assert "weights only" in capsys.readouterr().out
    assert (result.epochs_done, result.steps) == (4, 8)
    assert saved_epochs(tmp_path) == [3, 4]
    assert same_state(model.state_dict(), weights)


def test_no_checkpoint_starts_fresh_and_says_so(tiny_data, conv_model, make_settings, capsys):
    result = fit_tiny(make_settings(epochs=1, load_model="latest"), conv_model(), tiny_data)
    assert "starting fresh" in capsys.readouterr().out
    assert result.epochs_done == 1


def test_checkpoint_of_another_model_is_an_error_naming_it(tiny_data, conv_model, make_settings, tmp_path):
    (tmp_path / "checkpoints").mkdir()
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "checkpoints" / "tiny_1.pth")
    with pytest.raises(CheckpointError, match="tiny_1.pth: does not match the model"):
        fit_tiny(make_settings(load_model="latest"), conv_model(), tiny_data)


def test_checkpoint_of_another_optimizer_is_an_error_naming_it(tiny_data, conv_model, make_settings, tmp_path):
    fit_tiny(make_settings(epochs=1), conv_model(), tiny_data)
    model = conv_model()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(CheckpointError, match="tiny_1.pth: cannot resume"):
        fit_tiny(make_settings(load_model="latest"), model, tiny_data, optimizer=sgd)


def test_unknown_best_metric_is_a_config_error(tiny_data, conv_model, make_settings):
    with pytest.raises(ConfigError, match="trainer.best_metric='dice/golgi'"):
        fit_tiny(make_settings(best_metric="dice/golgi"), conv_model(), tiny_data)


def test_plain_progress_lines_without_a_terminal(tiny_data, conv_model, make_settings, capsys):
    fit_tiny(make_settings(progress_bar=True, log_every_n_steps=1), conv_model(), tiny_data)
    out = capsys.readouterr().out
    assert "epoch 2/2 step 4/4: loss" in out and "it/s, ETA" in out
    assert "\r" not in out


def test_best_metric_ema_is_tracked_and_resumed(tiny_data, conv_model, make_settings, tmp_path):
    fit_tiny(make_settings(epochs=2, best_metric_ema=0.5), conv_model(), tiny_data)
    first = read_checkpoint(tmp_path / "checkpoints" / "tiny_2.pth")
    assert math.isfinite(first["tracked_metric"]) and first["tracked_metric"] == first["metrics"]["dice/mean_ema"]
    fit_tiny(make_settings(epochs=3, best_metric_ema=0.5, load_model="latest"), conv_model(), tiny_data)
    third = read_checkpoint(tmp_path / "checkpoints" / "tiny_3.pth")
    expected = 0.5 * first["tracked_metric"] + 0.5 * third["metrics"]["dice/mean"]
    assert third["tracked_metric"] == pytest.approx(expected)


def test_load_model_best_continues_from_the_best_epoch_and_says_what_it_replaces(tiny_data, conv_model, make_settings,
                                                                               tmp_path, capsys):
    from cellmap_train.engine.tensorboard import TensorBoardLogger

    logger = TensorBoardLogger(tmp_path / "tensorboard" / "tiny")
    fit_tiny(make_settings(epochs=3), conv_model(), tiny_data, lr=0.0, logger=logger)  # equal epochs: epoch 1 is best
    logger.close()
    capsys.readouterr()
    result = fit_tiny(make_settings(epochs=3, load_model="best"), conv_model(), tiny_data, lr=0.0)
    out = capsys.readouterr().out
    assert "tiny_1.pth (epoch 1, step 2)" in out and "epochs 2..3 will be replaced" in out
    assert (result.epochs_done, result.steps) == (3, 6)


def test_a_stop_requested_before_training_stops_at_the_first_step_with_its_checkpoint(tiny_data, conv_model,
                                                                                      make_settings, tmp_path):
    # a sweep's job holds the StopRequest from its start: a signal during set-up is already recorded here
    from cellmap_train.engine import fit
    from cellmap_train.engine.losses import MaskedBCELoss
    from cellmap_train.host.stop_request import StopRequest

    model = conv_model()
    with StopRequest() as stop:
        stop.signal_name = "SIGTERM"  # what the handler records
        with pytest.raises(TrainingInterrupted, match=r"stopped by SIGTERM at epoch 1, step 1: checkpoint .*tiny_1\.pth"):
            fit(make_settings(epochs=2), model, torch.optim.AdamW(model.parameters()), None, MaskedBCELoss(), tiny_data,
                stop=stop)
    state = read_checkpoint(tmp_path / "checkpoints" / "tiny_1.pth")
    assert (state["epoch"], state["step"], state["epoch_steps"]) == (0, 1, 1)


def test_a_finished_run_resumed_has_nothing_to_train_and_reports_what_its_checkpoint_holds(tiny_data, conv_model,
                                                                                          make_settings, tmp_path, capsys):
    first = fit_tiny(make_settings(epochs=2), conv_model(), tiny_data)
    again = fit_tiny(make_settings(epochs=2, load_model="latest"), conv_model(), tiny_data)
    assert "Nothing to train: the checkpoint is at epoch 2 and epochs=2." in capsys.readouterr().out
    assert (again.epochs_done, again.steps, again.checkpoint) == (2, 4, first.checkpoint)
    assert again.best_metric == first.best_metric and again.best_epoch == first.best_epoch
    assert again.final_metrics["dice/mean"] == first.final_metrics["dice/mean"]  # the last epoch's, from its checkpoint
    assert again.final_metrics["loss/val"] == pytest.approx(first.final_metrics["loss/val"])
    assert again.first_metrics == {}  # no epoch of its own to report
