"""`python -m cellmap_train.predict` and `cellmap-train evaluate/pack`: one-line errors (in this
process, tests/inprocess.py, and once as a real process), and a killed prediction (a real process,
SIGKILL) that a rerun finishes without a half-written array ever sitting under its final name."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import zarr

from inprocess import run_module
from predict_helpers import write_manifest

PAUSE_ENV = "CELLMAP_TRAIN_TEST_PAUSE_AT"
MARKER = "cellmap_train test hook: paused at"


def one_error_line(proc: subprocess.CompletedProcess, *words: str) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert all(word in lines[0] for word in words), lines[0]
    return lines[0]


def test_missing_checkpoint_is_one_line(run_cli, tmp_path):
    """A real process: the one-line contract as the shell sees it."""
    proc = run_cli(f"input={tmp_path / 'no_such_run'}", module="cellmap_train.predict")
    one_error_line(proc, "no_such_run", "checkpoint not found")


def test_manifest_dataset_not_found_is_one_line(run_main, fake_run, tmp_path):
    manifest = write_manifest(tmp_path / "test_crop_manifest.csv", [
        ("901", "jrc_demo-1", "nuc", [8, 8, 8], [200, 400, 504], [8, 8, 8]),
        ("960", "jrc_missing-1", "nuc", [8, 8, 8], [0, 0, 0], [8, 8, 8])])
    proc = run_main(f"input={fake_run}", f"manifest={manifest}", f"output={tmp_path / 'p.zarr'}", module="cellmap_train.predict")
    one_error_line(proc, "test_crop_manifest.csv:3", "dataset jrc_missing-1 not found")
    assert not (tmp_path / "p.zarr").exists()  # checked before anything is written


def wait_for_line(proc: subprocess.Popen, words: str, timeout: float) -> bool:
    """Whether `proc` writes a stderr line holding `words` within `timeout` seconds (False at once
    when it ends first). A thread reads the pipe, so a run that stops writing cannot hang the test."""
    seen = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            if words in line:
                seen.set()
                return

    threading.Thread(target=read, daemon=True).start()
    while not seen.wait(timeout=0.5):
        timeout -= 0.5
        if timeout <= 0 or proc.poll() is not None:
            return seen.is_set()
    return True


def store_arrays(path: Path) -> dict[str, np.ndarray]:
    root = zarr.open_group(str(path), mode="r", zarr_format=2)
    return {f"{crop}/{label}": array[:] for crop, group in root.groups() for label, array in group.arrays()}


def test_killed_prediction_rerun_completes(fake_run, tmp_path, demo_cache):
    """Killed after its 3rd slab (crop5 written, crop9 half-way): what is under the final names is
    complete, the rerun writes the rest and the store equals an uninterrupted run's."""
    env = {**os.environ, "CELLMAP_TRAIN_DEMO_DIR": str(demo_cache), PAUSE_ENV: "predict_slab@3"}
    out = tmp_path / "killed.zarr"
    args = [f"input={fake_run}", f"output={out}", "chunks=[16,64,64]", "progress_bar=false"]
    proc = subprocess.Popen([sys.executable, "-m", "cellmap_train.predict", *args], cwd=tmp_path, env=env,
                            stderr=subprocess.PIPE, text=True)
    assert wait_for_line(proc, MARKER, timeout=300), "the prediction never reached its 3rd slab"  # it pauses there
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    partial = tmp_path / "killed.zarr.partial"
    assert any(partial.rglob(".zarray"))  # crop9's arrays were being written there
    for name, values in store_arrays(out).items():  # whatever is under a final name is whole
        assert name.startswith("crop5/") and values.shape == (32, 96, 96)
    assert not (out / "crop9").exists() or not any((out / "crop9").glob("*/.zarray"))

    unpaused = {k: v for k, v in env.items() if k != PAUSE_ENV}
    rerun = run_module("cellmap_train.predict", *args, cwd=tmp_path, env=unpaused)
    assert rerun.returncode == 0, rerun.stderr
    assert "3 already there kept" in rerun.stdout
    assert not partial.exists()
    clean = tmp_path / "clean.zarr"
    made = run_module("cellmap_train.predict", f"input={fake_run}", f"output={clean}", "progress_bar=false", cwd=tmp_path,
                      env=unpaused)
    assert made.returncode == 0, made.stderr
    finished, reference = store_arrays(out), store_arrays(clean)
    assert sorted(finished) == sorted(reference) == [f"crop{c}/{k}" for c in (5, 9) for k in ("er", "mito", "nuc")]
    for name in reference:
        np.testing.assert_array_equal(finished[name], reference[name], err_msg=name)
    crop9 = json.loads((out / "crop9" / ".zattrs").read_text())
    assert sorted(e["name"] for e in crop9["multiscales"]) == ["er", "mito", "nuc"]


def test_a_store_of_another_checkpoint_is_not_overwritten(run_main, fake_run, tmp_path):
    out = tmp_path / "p.zarr"
    run_main(f"input={fake_run}", f"output={out}", "progress_bar=false", module="cellmap_train.predict", check=True)
    other = tmp_path / "other.pth"
    other.write_bytes((fake_run / "checkpoints" / "tiny_1.pth").read_bytes())
    proc = run_main(f"input={other}", f"output={out}", module="cellmap_train.predict")
    one_error_line(proc, "holds predictions of", "overwrite=true")
