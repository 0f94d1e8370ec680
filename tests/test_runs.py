"""`cellmap-train runs`: the runs under a folder, best first. Folders laid out as runs write them
(result.json through write_record, Hydra's .hydra/overrides.yaml); test_sweeps lists a real sweep."""

from __future__ import annotations

import subprocess
import sys

import yaml

from cellmap_train.run.listing import main, ranked, run_rows, shown
from cellmap_train.run.record import write_record

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
    write_record(folder, record)


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
    text, common, _ = shown(table)
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
    assert main([str(tmp_path / "outputs"), "--width", "200"]) == 0
    heading, *lines = capsys.readouterr().out.splitlines()
    assert heading == f"3 runs under {tmp_path / 'outputs'}, all with: classes nuc er; metric dice/mean; best_epoch 3; epochs_done 5"
    assert lines[0].split()[:3] == ["run", "overrides", "status"]
    assert lines[1].split()[:5] == ["2026-12-01/10-00-00", "lr=1e-3", "seed=3", "ok", "0.5"]
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


def twenty_runs(folder):
    """A sweep of 16 jobs with long overrides, three single runs on other classes (one failing with
    a long error) and one stopped by its config before training (listed only with --all)."""
    sweep = folder / "multirun" / "2026-12-01" / "10-00-00-123456"
    common = ["experiment=demo", "data.dataloader_kwargs.num_workers=0", "paths.data_dir=/groups/cellmap/"
              "cellmap/data/fibsem/challenge_2026/local_copy_of_the_public_bucket", "trainer.max_grad_norm=1.0"]
    for job in range(16):
        lr, seed = ("1e-3", "3e-4", "1e-4", "3e-5")[job % 4], job // 4
        a_run(sweep / str(job), [*common, f"lr={lr}", f"seed={seed}",
                                 f"init_from=/groups/cellmap/home/someone/experiments/pretraining/run_{job}/best.pth"],
              best=0.3 + job / 100)
    for name, best in (("10-20-30-000001", 0.8), ("11-20-30-000002", 0.7)):
        a_run(folder / "2026-12-02" / name, ["experiment=demo", "classes=[mito,er,nuc,golgi,ves,lyso,ld,perox]"],
              best=best, classes=("mito", "er", "nuc", "golgi", "ves", "lyso", "ld", "perox"))
    a_run(folder / "2026-12-02" / "12-00-00-000003", ["experiment=demo", "model=3d_unet"], status="failed",
          error="data: jrc_hela-2/crop155: the chunk recon-1/em/fibsem-uint8/s0/12/40/33 could not be read: storage "
                "unreachable after its retries (connection reset by peer), see data.storage_options")
    a_run(folder / "2026-12-02" / "13-00-00-000004", ["lr=abc"], status="failed", error="lr='abc': must be a positive number")
    record = yaml.safe_load((folder / "2026-12-02" / "13-00-00-000004" / "result.json").read_text())
    write_record(folder / "2026-12-02" / "13-00-00-000004", {**record, "config_error": True})
    return sweep


def test_twenty_runs_fit_a_120_column_terminal(tmp_path, capsys):
    twenty_runs(tmp_path)
    assert main([str(tmp_path), "--width", "120"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(map(len, lines)) <= 120, "\n" + out
    table = next(i for i, line in enumerate(lines) if line.startswith("run "))
    rows = lines[table + 1:]
    assert len(rows) == 19 and "000004" not in out  # the config error: only with --all
    assert "1 stopped by their config before training: --all lists them" in " ".join(lines)
    assert "experiment=demo" in lines[0] and "experiment=demo" not in "\n".join(rows)  # said once
    assert rows[0].split()[0].endswith("20-30-000001")  # best first
    assert rows[-1].split()[0].endswith("00-00-000003")  # failed last
    assert [row.split()[0][-3:] for row in rows[2:5]] == ["/15", "/14", "/13"]  # run folders keep their ends
    sweep_row = rows[2].split()
    assert sweep_row[1].startswith("init_from=/") and "…" in sweep_row[1]  # long values shortened, keys kept
    assert sweep_row[2] == "lr=3e-5"
    error = rows[-1].split("  ")[-1].strip()
    assert error.startswith("data: jrc_hela-2/cr") and error.endswith("…")  # an error keeps its start
    assert main([str(tmp_path), "--width", "120", "--all"]) == 0
    out = capsys.readouterr().out
    assert "-000004  lr=abc" in out and max(map(len, out.splitlines())) <= 120
    assert main([str(tmp_path), "--width", "80"]) == 0  # narrower still: columns of least use go first
    assert max(map(len, capsys.readouterr().out.splitlines())) <= 80


def test_filters_metric_choice_and_csv(tmp_path, capsys):
    import io
    import os

    import pandas as pd

    sweep = twenty_runs(tmp_path)
    for job in range(16):  # job 15 ended last
        os.utime(sweep / str(job) / "result.json", (1_800_000_000 + job, 1_800_000_000 + job))
    assert main([str(tmp_path), "--status", "failed", "--width", "120"]) == 0
    out = capsys.readouterr().out
    assert "12-00-00" in out and "multirun" not in out and "13-00-00" not in out
    assert main([str(sweep), "--last", "3", "--csv"]) == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert frame.run.astype(str).tolist() == ["15", "14", "13"]  # best first among the three
    assert frame.overrides[0].endswith("init_from=/groups/cellmap/home/someone/experiments/pretraining/run_15/best.pth")
    assert main([str(sweep), "--metric", "time", "--width", "120"]) == 0
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("run ")).split()
    assert header[:3] == ["run", "overrides", "status"] and "wall_time_s" in header
    assert main([str(sweep), "--metric", "nonsense"]) == 2
    assert "--metric nonsense: no run records it" in capsys.readouterr().err
    assert main([str(tmp_path), "--last", "0"]) == 2
