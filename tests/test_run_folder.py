"""init_from=<folder>: which checkpoint a run folder or a sweep folder stands for. The folders are
laid out as runs and sweeps write them (result.json through write_record, summary.csv sorted
best first); the end-to-end runs are in test_train_smoke (a run folder) and test_sweeps (a sweep)."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch

from cellmap_train.errors import CheckpointError
from cellmap_train.run.init_from import checkpoint_of
from cellmap_train.run.record import write_record


def run_folder(path, epochs=3, best_epoch=2, status="ok", error=None, keep=None):
    """A finished run: checkpoints of `keep` (default all) epochs, result.json as job.record writes it."""
    for epoch in keep if keep is not None else range(1, epochs + 1):
        (path / "checkpoints").mkdir(parents=True, exist_ok=True)
        torch.save({"model": {}, "epoch": epoch}, path / "checkpoints" / f"2d_unet_{epoch}.pth")
    write_record(path, {
        "status": status, "error": error, "best_metric_name": "dice/mean", "best_metric": 0.8125, "best_epoch": best_epoch,
        "epochs_done": epochs if status == "ok" else 0, "checkpoint": str(path / "checkpoints" / f"2d_unet_{epochs}.pth"),
        "best_checkpoint": f"checkpoints/2d_unet_{best_epoch}.pth" if best_epoch else None,
    })
    return path


def test_a_file_is_itself(tmp_path):
    assert checkpoint_of(tmp_path / "a.pth") == (tmp_path / "a.pth", None)


def test_a_run_folder_gives_its_best_checkpoint_even_after_a_move(tmp_path):
    run = run_folder(tmp_path / "run")
    assert checkpoint_of(run) == (run / "checkpoints" / "2d_unet_2.pth", "its best checkpoint (epoch 2, dice/mean 0.8125)")
    moved = shutil.move(run, tmp_path / "elsewhere")  # result.json's absolute latest path now points nowhere
    assert checkpoint_of(moved)[0] == tmp_path / "elsewhere" / "checkpoints" / "2d_unet_2.pth"


def test_without_its_best_file_the_latest_is_taken_and_said(tmp_path):
    run = run_folder(tmp_path / "run", keep=[3])
    assert checkpoint_of(run) == (run / "checkpoints" / "2d_unet_3.pth",
                                  "its latest checkpoint (epoch 3; the best checkpoint is gone)")
    shutil.move(run, tmp_path / "moved")
    assert checkpoint_of(tmp_path / "moved")[0] == tmp_path / "moved" / "checkpoints" / "2d_unet_3.pth"
    no_best = run_folder(tmp_path / "nan", best_epoch=None)  # e.g. every validation metric NaN
    assert checkpoint_of(no_best)[1] == "its latest checkpoint (epoch 3; the run has no best dice/mean)"


def test_a_run_that_failed_before_a_checkpoint_is_named_with_its_error(tmp_path):
    run = run_folder(tmp_path / "run", best_epoch=None, status="failed", error="lr='abc': not a number", keep=[])
    with pytest.raises(CheckpointError, match=r"run: the run wrote no checkpoint that is still there "
                                              r"\(it ended failed: lr='abc': not a number\)"):
        checkpoint_of(run)


def test_an_unreadable_record_is_named(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "result.json").write_text('{"status": "ok", ')
    with pytest.raises(CheckpointError, match=r"result.json: not a readable run record"):
        checkpoint_of(tmp_path / "run")


def test_another_folder_lists_the_checkpoints_in_it(tmp_path):
    run = run_folder(tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"checkpoints: a folder, but neither a run folder \(no result.json: a run "
                                              r"still going or killed\?\) nor a sweep folder \(no summary.csv\); name a "
                                              r"checkpoint file; checkpoint files in it: 2d_unet_1.pth, 2d_unet_2.pth, 2d_unet_3.pth"):
        checkpoint_of(run / "checkpoints")


def sweep(path, rows):
    for job, status in rows:
        run_folder(path / job, status=status, keep=[] if status != "ok" else None, best_epoch=2 if status == "ok" else None)
    pd.DataFrame([{"job": job, "status": status} for job, status in rows]).to_csv(path / "summary.csv", index=False)
    return path


def test_a_sweep_folder_gives_its_best_jobs_best_checkpoint(tmp_path):
    # summary.csv is sorted best first; a failed job at the top (no metric) would not be, but is skipped anyway
    folder = sweep(tmp_path / "sweep", [("10", "failed"), ("2", "ok"), ("0", "ok")])
    path, how = checkpoint_of(folder)
    assert path == folder / "2" / "checkpoints" / "2d_unet_2.pth"
    assert how == "job 2, the sweep's best, its best checkpoint (epoch 2, dice/mean 0.8125)"


def test_a_sweep_without_a_good_job_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match=r"sweep: no job of the sweep ended ok \(see its summary.csv\)"):
        checkpoint_of(sweep(tmp_path / "sweep", [("0", "failed")]))
