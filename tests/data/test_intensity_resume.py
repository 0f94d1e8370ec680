"""Layer 2: with every intensity step on, a run of 2 epochs equals, bit for bit, a run of 1 epoch
resumed for 1 more: the steps draw only from each sample's own generator, in the DataLoader
workers. And they do change what is trained on: without them the weights differ."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from inprocess import run_module

pytestmark = pytest.mark.slow

TINY = ["experiment=demo", "iterations_per_epoch=3", "batch_size=4", "validation_batch_limit=2",
        "trainer.deterministic=true", "data.dataloader_kwargs.num_workers=1", "model.base_features=4", "model.depth=2",
        "input_array_info={shape:[1,48,48],scale:[8,8,8]}"]
ALL_ON = ["transforms=intensity", *(f"transforms.train.intensity.{step}.p=1" for step in ("gamma", "contrast", "blur", "noise"))]


@pytest.fixture(scope="module")
def runs(demo_cache, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("intensity_runs")
    env = {**os.environ, "CELLMAP_TRAIN_DEMO_DIR": str(demo_cache), "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)

    def run(name: str, *args: str) -> subprocess.CompletedProcess:
        proc = run_module("cellmap_train", *TINY, f"hydra.run.dir={name}", *args, cwd=folder, env=env)  # in this process
        assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc

    run("straight", *ALL_ON, "epochs=2")
    run("resumed", *ALL_ON, "epochs=1")
    assert "(epoch 1, step 3)" in run("resumed", *ALL_ON, "epochs=2", "load_model=latest").stdout
    run("plain", "epochs=2")
    return folder


def weights(folder: Path, run: str) -> dict[str, torch.Tensor]:
    return torch.load(folder / run / "checkpoints" / "2d_unet_2.pth", weights_only=True)["model"]


def test_resumed_with_intensity_equals_straight_bit_for_bit(runs):
    straight, resumed = weights(runs, "straight"), weights(runs, "resumed")
    assert straight.keys() == resumed.keys() and straight
    assert not [key for key in straight if not torch.equal(straight[key], resumed[key])]


def test_intensity_changes_what_is_trained_on(runs):
    straight, plain = weights(runs, "straight"), weights(runs, "plain")
    assert any(not torch.equal(straight[key], plain[key]) for key in straight)
