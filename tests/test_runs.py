"""`cellmap-train runs`: the runs under a folder, best first. Folders laid out as runs write them
(result.json through write_result, Hydra's .hydra/overrides.yaml); test_sweeps lists a real sweep."""

from __future__ import annotations

import subprocess
import sys

import yaml

from cellmap_train.runs import main, ranked, run_rows, shown
from cellmap_train.sweep import write_result

CLI = [sys.executable, "-c", "import sys; from cellmap_train.cli import main; sys.exit(main())"]


def a_run(folder, overrides, metric_name="dice/mean", best=None, status="ok", low_is_best=None, error=None,
          classes=("nuc", "er")):
    """A run folder as a finished run leaves it (no checkpoint files: the listing does not open them)."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    record = {"status": status, "error": error, "best_metric_name": metric_name, "best_metric": best, "best_epoch": 3,
              "epochs_done": 5, "wall_time_s": 12.5, "best_checkpoint": "checkpoints/2d_unet_3.pth"}
    if classes is not None:  # None: a record from before classes were kept
        record["classes"] = list(classes)
    if low_is_best is not None:
        record["low_is_best"] = low_is_best
    write_result(folder, record)


def test_runs_are_ranked_within_their_metric_and_failures_come_last(tmp_path):
    a_run(tmp_path / "2026-12-01" / "10-00-00", ["experiment=demo", "lr=1e-3"], best=0.5)
    a_run(tmp_path / "2026-12-01" / "11-00-00", ["experiment=demo", "lr=3e-4"], best=0.75)
    a_run(tmp_path / "2026-12-02" / "09-00-00", ["experiment=demo", "lr=abc"], status="failed", error="lr='abc': not a number")
    a_run(tmp_path / "loss" / "a", ["experiment=demo", "trainer.best_metric=loss/val"], "loss/val", best=0.25, low_is_best=True)
    a_run(tmp_path / "loss" / "b", ["experiment=demo", "trainer.best_metric=loss/val"], "loss/val", best=0.125)  # older record: no low_is_best
    (tmp_path / "killed" / ".hydra").mkdir(parents=True)  # a run still going or killed: no result.json, not listed
    table = ranked(run_rows(tmp_path))
    assert table.run.tolist() == ["2026-12-01/11-00-00", "2026-12-01/10-00-00", "loss/b", "loss/a", "2026-12-02/09-00-00"]
    assert table.overrides.tolist()[:2] == ["experiment=demo lr=3e-4", "experiment=demo lr=1e-3"]
    assert table.error.tolist()[-1] == "lr='abc': not a number"
    text, common = shown(table)
    assert common == ["experiment=demo"]  # said once, not in every row
    assert text.splitlines()[1].split()[:3] == ["2026-12-01/11-00-00", "lr=3e-4", "ok"]


def test_runs_on_different_classes_are_ranked_apart_and_the_column_shows_only_then(tmp_path):
    """A mean Dice over [mito] is no better than one over [nuc, er] because it is higher."""
    a_run(tmp_path / "a", ["lr=1e-3"], best=0.5)
    a_run(tmp_path / "b", ["lr=3e-4"], best=0.6)
    a_run(tmp_path / "c", ["classes=[mito]"], best=0.9, classes=["mito"])
    a_run(tmp_path / "d", ["classes=[mito]", "lr=3e-4"], best=0.7, classes=["mito"])
    a_run(tmp_path / "old", ["lr=1e-2"], best=0.95, classes=None)
    table = ranked(run_rows(tmp_path))
    assert table.run.tolist() == ["c", "d", "b", "a", "old"]
    assert table.classes.fillna("?").tolist() == ["mito", "mito", "nuc er", "nuc er", "?"]
    header = shown(table)[0].splitlines()[0].split()
    assert header[:4] == ["run", "overrides", "status", "classes"]
    same = ranked(run_rows(tmp_path / "a"))  # one class set: no column for it
    assert "classes" not in shown(same)[0].splitlines()[0].split()


def test_the_command_prints_the_table_and_names_a_bad_folder(tmp_path, capsys):
    a_run(tmp_path / "outputs" / "2026-12-01" / "10-00-00", ["lr=1e-3", "seed=3"], best=0.5)
    (tmp_path / "outputs" / "broken").mkdir()
    (tmp_path / "outputs" / "broken" / "result.json").write_text("{")
    (tmp_path / "outputs" / "listed" / ".hydra").mkdir(parents=True)
    (tmp_path / "outputs" / "listed" / "result.json").write_text("[1, 2]")
    (tmp_path / "outputs" / "listed" / ".hydra" / "overrides.yaml").write_text("lr: 1")
    assert main([str(tmp_path / "outputs")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["run", "overrides", "status"]
    assert lines[1].split()[:5] == ["2026-12-01/10-00-00", "lr=1e-3", "seed=3", "ok", "dice/mean"]
    assert lines[2].split()[:3] == ["broken", "-", "unreadable"]
    assert lines[3].split()[:3] == ["listed", "(unreadable", ".hydra/overrides.yaml)"] and lines[3].endswith(
        "result.json: holds a list, not a run record")
    assert main([str(tmp_path / "nowhere")]) == 1
    assert capsys.readouterr().err.strip() == f"cellmap-train runs: error: {tmp_path / 'nowhere'}: no such folder"


def test_cellmap_train_runs_defaults_to_outputs(tmp_path):
    proc = subprocess.run([*CLI, "runs"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "outputs: no such folder" in proc.stderr
    (tmp_path / "outputs").mkdir()
    proc = subprocess.run([*CLI, "runs"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "No runs under outputs (a run writes result.json when it ends)."
