"""Layer 2: real `python -m cellmap_train` runs. A run of 4 epochs equals, bit for bit, a run of
2 epochs resumed for 2 more; its event files hold every tag; a truncated checkpoint is refused."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch


pytestmark = pytest.mark.slow

CLASSES = ["nuc", "er", "mito"]
TINY = ["experiment=demo", "iterations_per_epoch=3", "batch_size=4", "validation_batch_limit=4",
        "trainer.deterministic=true", "data.dataloader_kwargs.num_workers=1", "model.base_features=4"]


@pytest.fixture(scope="module")
def cli(demo_cache, tmp_path_factory):
    """Runs `python -m cellmap_train TINY... ARGS` with its run folder at <folder>/<run>."""
    folder = tmp_path_factory.mktemp("engine_runs")

    def run(run: str, *args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "CELLMAP_TRAIN_DEMO_DIR": str(demo_cache), "PYTHONUNBUFFERED": "1"}
        env.pop("HYDRA_FULL_ERROR", None)
        return subprocess.run([sys.executable, "-m", "cellmap_train", *TINY, f"hydra.run.dir={run}", *args],
                              cwd=folder, env=env, capture_output=True, text=True, timeout=600)

    run.folder = folder
    return run


def checked(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def runs(cli) -> dict[str, Path]:
    checked(cli("straight", "epochs=4"))
    checked(cli("resumed", "epochs=2"))
    proc = checked(cli("resumed", "epochs=4", "load_model=latest"))
    assert "Resumed from" in proc.stdout and "2d_unet_2.pth (epoch 2, step 6)" in proc.stdout
    return {name: cli.folder / name for name in ("straight", "resumed")}


def tensors(value, prefix=""):
    """Every tensor in a nested state dict, by path."""
    if isinstance(value, torch.Tensor):
        yield prefix, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from tensors(item, f"{prefix}/{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from tensors(item, f"{prefix}/{i}")


def test_two_plus_two_epochs_equal_four_bit_for_bit(runs):
    straight, resumed = (torch.load(runs[name] / "checkpoints" / "2d_unet_4.pth", weights_only=True)
                         for name in ("straight", "resumed"))
    assert (straight["epoch"], straight["step"]) == (resumed["epoch"], resumed["step"]) == (4, 12)
    for part in ("model", "optimizer"):
        left, right = dict(tensors(straight[part])), dict(tensors(resumed[part]))
        assert left.keys() == right.keys() and left
        unequal = [key for key in left if not torch.equal(left[key], right[key])]
        assert not unequal, f"{part} differs at {unequal[:5]}"
    timing = {"throughput/samples_per_s"}
    same = {k: v for k, v in straight["metrics"].items() if k not in timing}
    assert same == pytest.approx({k: v for k, v in resumed["metrics"].items() if k not in timing}, nan_ok=True, rel=0, abs=0)


def test_event_files_hold_every_tag(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars, images, plugins = set(), set(), set()
    for events in (runs["straight"] / "tensorboard" / "2d_unet").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0, "images": 0})
        acc.Reload()
        scalars |= set(acc.Tags()["scalars"])
        images |= set(acc.Tags()["images"])
        with contextlib.suppress(KeyError):  # only the files a process ended in have the plugin
            plugins |= set(acc.PluginTagToContent("hparams"))
    expected = {"loss/train", "loss/train_smooth", "lr", "loss/val", "loss/train_epoch", "dice/mean", "iou/mean",
                "throughput/samples_per_s", "val/batches", "val/coverage",
                *(f"{metric}/{c}" for metric in ("dice", "iou") for c in CLASSES)}
    assert expected <= scalars, sorted(expected - scalars)
    assert not [tag for tag in scalars if tag.startswith("hparam/")]  # hyper-parameters: the HParams tab only
    assert {f"samples/{c}" for c in CLASSES} <= images
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= plugins


def test_truncated_checkpoint_is_refused_with_its_name(runs, cli):
    shutil.copytree(runs["straight"], cli.folder / "truncated")
    latest = cli.folder / "truncated" / "checkpoints" / "2d_unet_4.pth"
    latest.write_bytes(latest.read_bytes()[:1000])
    proc = cli("truncated", "epochs=5", "load_model=latest")
    assert proc.returncode == 1
    assert "2d_unet_4.pth" in proc.stderr and "truncated or corrupt" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert latest.stat().st_size == 1000 and not (latest.parent / "2d_unet_5.pth").exists()
