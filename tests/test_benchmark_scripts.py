"""The benchmark scripts stay runnable (they are not timed here: their figures live in
benchmarks/RESULTS.md): a tiny engine benchmark with AMP, as a GPU session would run it (a small
model: bf16 on a CPU is slow); the
layout benchmark on two models; the sweep benchmark with one pair of 2-job sweeps of one-step jobs; the rotation and
label-transport and mutual-exclusion benchmarks on small crops; the memory benchmark on the case that showed weights
must count, where it also checks the preflight's floor against a real step. benchmarks/s3.py is left out: it takes a minute and more
(its own S3 server, the demo uploaded, two runs); tests/data/test_s3.py checks the requests it counts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_engine_benchmark_runs_with_amp(demo_cache, tmp_path):
    env = {**os.environ, "CELLMAP_TRAIN_DEMO_DIR": str(demo_cache)}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "engine.py"), "--steps", "2", "--warmup", "1",
                           "--starts", "1", "--device", "cpu", "--amp", "bf16", "batch_size=2", "model.base_features=4"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "device cpu, amp bf16" in proc.stdout
    assert "ratio loader/pre-loaded:" in proc.stdout
    assert "process start -> first optimizer step:" in proc.stdout


def test_layout_benchmark_runs(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "layout.py"), "--steps", "1", "--threads", "1",
                           "--models", "2d_unet", "3d_unet"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith(("2d_unet", "3d_unet"))]
    assert [row[0] for row in rows] == ["2d_unet", "3d_unet"]
    assert all(row[-1].endswith("x") and float(row[-1][:-1]) > 0 for row in rows)


@pytest.mark.slow
def test_sweep_benchmark_runs(demo_cache, tmp_path):
    env = {**os.environ, "CELLMAP_TRAIN_DEMO_DIR": str(demo_cache)}
    # one pair of 2-job sweeps (each pair of 4-job sweeps, or --repeats 2, adds most of a minute)
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "sweep.py"), "--epochs", "1", "--iterations", "1",
                           "--seeds", "1"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2-job demo sweep (1 epochs, 1 steps per job" in proc.stdout
    assert proc.stdout.count("jobs ok: 2/2") == 2
    seconds = [float(line.split(":", 1)[1].split()[0]) for line in proc.stdout.splitlines() if " launcher (" in line]
    ratio = float(proc.stdout.split("ratio joblib / basic:")[1].split()[0])
    assert len(seconds) == 2 and ratio == pytest.approx(seconds[1] / seconds[0], abs=0.02)  # both rounded in print


def test_rotation_benchmark_runs(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "rotation.py"), "--data-dir", str(tmp_path),
                           "--crop-size", "64", "--samples", "4", "--samples-3d", "2"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if "turned about" in line]
    assert [row.split(",")[0] for row in rows] == ["1x32x32", "32x32x32", "32x32x32"]
    for row in rows:  # the context never leaves more unknown than blank corners do
        with_context, blank = (float(v.rstrip("%")) for v in row.split()[-3::2])
        assert with_context <= blank


def test_label_transport_benchmark_runs(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "labels.py"), "--data-dir", str(tmp_path),
                           "--crop-size", "64", "--shape", "16", "16", "16", "--warmup", "1", "--batches", "2"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "labels of 48 classes, batch 2 x 16x16x16" in proc.stdout
    sizes = next(line for line in proc.stdout.splitlines() if line.startswith("MiB per label batch")).split()
    assert sizes[-1] == "4.00x"  # float32 against uint8, measured on the batches the workers sent
    speed = next(line for line in proc.stdout.splitlines() if line.startswith("batches/s")).split()
    assert float(speed[-1].rstrip("x")) > 0


def test_memory_benchmark_finds_the_preflight_floor_below_a_real_step(tmp_path):
    """train_2D at batch_size=1: 0.46 GiB of weights, gradients and RAdam state beside 70 MiB of layer
    outputs. The peak resident memory of a real step must reach the floor the preflight refuses below."""
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "memory.py"), "--steps", "1",
                           "--cases", "experiment=train_2D batch_size=1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = next(line for line in proc.stdout.splitlines() if line.startswith("experiment=train_2D")).split()
    outputs, weights, peak = (float(value.rstrip("M")) for value in row[-6:-3])
    assert weights > 400 and outputs < 100
    assert float(row[-3]) >= 1.0, proc.stdout  # peak / floor
    assert float(row[-2]) > 5, proc.stdout  # peak / outputs only: what the check counted before


def test_mutual_exclusion_benchmark_runs(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "mutual_exclusion.py"), "--data-dir", str(tmp_path),
                           "--crop-size", "64", "--shapes", "1x32x32", "--samples", "3"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = next(line for line in proc.stdout.splitlines() if line.startswith("1x32x32")).split()
    known_off, known_on = (float(value.rstrip("%")) for value in row[-2:])
    assert float(row[3].rstrip("x")) > 0 and known_on > known_off  # 45 of 48 classes gain inferred negatives


def test_intensity_benchmark_runs(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "intensity.py"), "--data-dir", str(tmp_path),
                           "--crop-size", "64", "--samples", "3"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.endswith("x")]
    assert len(rows) == 2  # a training sample, the value transforms alone
    for row in rows:
        times = [float(row[i - 1]) for i, word in enumerate(row) if word == "ms"]  # default, preset, all on
        assert len(times) == 3 and all(t > 0 for t in times)
        assert float(row[-1].rstrip("x")) == pytest.approx(times[2] / times[0], rel=0.05)  # of 3-decimal figures
