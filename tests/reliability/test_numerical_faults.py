"""A NaN/inf loss stops the run at its step, in one line, keeping the last good checkpoint;
with trainer.skip_nonfinite_steps=true the step is skipped (and said so) and training goes on."""

from __future__ import annotations

import math

import pytest

from cellmap_train.engine.checkpoint import read_checkpoint
from faults import HERE, TINY, error_line

NAN_AT_5 = [*TINY, "epochs=2", "data.dataloader_kwargs.num_workers=0", "hydra.run.dir=run",
            "loss._target_=nan_loss.NanAtStep", "+loss.at_step=5"]


@pytest.fixture
def nan_loss_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(run_inprocess, tmp_path, nan_loss_importable):
    code, stderr = run_inprocess(*NAN_AT_5)
    assert code == 1
    assert ("loss is nan at epoch 2, step 5: input and weights are finite, the model's output or the loss is not"
            in error_line(stderr))
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("*.pth")) == ["2d_unet_1.pth"]
    assert read_checkpoint(checkpoints / "2d_unet_1.pth")["step"] == 3


def test_skip_nonfinite_steps_goes_on(run_inprocess, tmp_path, nan_loss_importable, capsys):
    code, stderr = run_inprocess(*NAN_AT_5, "trainer.skip_nonfinite_steps=true")
    assert code == 0, stderr[-3000:]
    assert "loss is nan at epoch 2, step 5: step skipped" in stderr
    state = read_checkpoint(tmp_path / "run" / "checkpoints" / "2d_unet_2.pth")
    assert state["step"] == 6
    assert all(bool(t.isfinite().all()) for t in state["model"].values() if t.is_floating_point())
    assert math.isfinite(state["metrics"]["loss/train_epoch"])
