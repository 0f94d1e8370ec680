"""The whole path on the demo: train briefly, predict the run's validation crops (each at its own
voxel size: 8 nm and [5.24, 4, 4] nm), evaluate; the mean Dice matches the run's own last
validation Dice."""

from __future__ import annotations

import json

import pandas as pd
import pytest


@pytest.mark.slow
def test_predicted_validation_crops_score_as_the_run_validated(run_main, tmp_path):
    run_dir = tmp_path / "run"
    train = run_main("experiment=demo", "epochs=2", "iterations_per_epoch=45", "classes=[nuc,mito]", "input_array_info.shape=[1,64,64]",
                    "validation_batch_limit=null", "trainer.progress_bar=false", f"hydra.run.dir={run_dir}", check=True)
    assert f"Predict: cellmap-train predict input={run_dir}" in train.stdout  # the demo's closing line
    record = json.loads((run_dir / "result.json").read_text())
    last_dice, last_checkpoint = record["final_metric"], run_dir / record["checkpoint"]  # relative to the run folder

    out = tmp_path / "predictions.zarr"
    run_main(f"input={last_checkpoint}", f"output={out}", "progress_bar=false", module="cellmap_train.predict", check=True)
    evaluated = run_main("evaluate", str(out), module="cellmap_train.cli", check=True)
    table = pd.read_csv(tmp_path / "predictions_evaluation.csv")
    per_crop = table[table["crop"] != "ALL"]
    assert sorted(per_crop["voxel_size"].unique()) == ["5.24x4x4", "8x8x8"]  # each crop on its own grid
    assert set(per_crop["label"]) == {"nuc", "mito"} and (per_crop["known"] > 0).all()
    mean_dice = float(table[(table["crop"] == "ALL") & (table["label"] == "mean")]["dice"].iloc[0])
    assert "Overall: mean Dice" in evaluated.stdout
    assert mean_dice == pytest.approx(last_dice, abs=0.05), (mean_dice, last_dice, evaluated.stdout)
