"""Layer 2: real training runs through `python -m cellmap_train` on the demo data (in this process,
tests/inprocess.py, but for the README's demo run: a fresh interpreter, as a user's)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from cellmap_train.run.listing import ranked, run_rows


def event_tags(log_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in log_dir.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    return tags


def test_two_step_training_writes_checkpoint_and_events(run_main, tmp_path):
    proc = run_main("experiment=demo", "trainer=smoke", "hydra.run.dir=run", check=True)
    run = tmp_path / "run"
    checkpoints = sorted((run / "checkpoints").glob("2d_unet_*.pth"))
    assert [p.name for p in checkpoints] == ["2d_unet_1.pth"]
    tags = event_tags(run / "tensorboard" / "2d_unet")
    assert {"loss/train", "loss/val", "dice/nuc", "dice/er", "dice/mito", "dice/mean"} <= tags
    loss = float(re.search(r"loss/train ([0-9.eE+-]+|nan)", proc.stdout).group(1))
    assert math.isfinite(loss)
    assert (run / "datasplit.csv").read_text().count("\n") >= 2


def test_3d_unet_trains_two_steps(run_main, tmp_path):
    run_main("experiment=demo", "trainer=smoke", "model=3d_unet", "hydra.run.dir=run",
            "input_array_info.shape=[16,32,32]", "batch_size=2", "model.base_features=4", "model.depth=2", check=True)
    assert (tmp_path / "run" / "checkpoints" / "3d_unet_1.pth").is_file()


@pytest.mark.slow
@pytest.mark.longest
def test_demo_experiment_learns_and_a_new_run_starts_from_it(run_cli, run_main, tmp_path):
    """README command (1): the demo run ends with a checkpoint, event files and a higher Dice.
    Then init_from: a run on two of its classes, in another order, starts where it ended (one
    step at a learning rate that changes nothing), far above its own first epoch."""
    proc = run_cli("experiment=demo", "hydra.run.dir=run", check=True)  # a fresh interpreter, as a user's
    match = re.search(r"epoch 1 ([0-9.]+) -> final ([0-9.]+)", proc.stdout)
    first, final = float(match.group(1)), float(match.group(2))
    assert final > first + 0.1, proc.stdout
    trained = tmp_path / "run" / "checkpoints" / "2d_unet_10.pth"
    assert trained.is_file()
    assert {"loss/train", "loss/val", "dice/nuc"} <= event_tags(tmp_path / "run" / "tensorboard" / "2d_unet")
    proc = run_main("experiment=demo", "hydra.run.dir=tuned", "classes=[mito,nuc]", "init_from=run",
                   "epochs=1", "iterations_per_epoch=1", "lr=1e-12", check=True)
    record = json.loads((tmp_path / "run" / "result.json").read_text())  # the run folder stands for its best checkpoint
    best = tmp_path / "run" / record["best_checkpoint"]
    assert record["best_checkpoint"] == f"checkpoints/2d_unet_{record['best_epoch']}.pth" and best.is_file()
    assert f"init_from=run: its best checkpoint (epoch {record['best_epoch']}, dice/mean {record['best_metric']:.4g}): " \
           f"{best}" in proc.stdout
    assert f"Initialised model weights from {best} (92 tensors; trained on nuc, er, mito): output channels of " \
           f"mito, nuc taken from it." in proc.stdout
    tuned = float(re.search(r"final ([0-9.]+)", proc.stdout).group(1))
    assert tuned > max(first + 0.1, 0.7), proc.stdout
    # the two runs scored different class sets: the listing says so and ranks each set on its own
    assert record["classes"] == ["nuc", "er", "mito"]
    assert json.loads((tmp_path / "tuned" / "result.json").read_text())["classes"] == ["mito", "nuc"]
    table = ranked(run_rows(tmp_path))
    assert table[["run", "classes"]].values.tolist() == [["tuned", "mito nuc"], ["run", "nuc er mito"]]
