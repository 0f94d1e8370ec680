"""A non-editable `pip install .` finds its config tree from outside the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_install_composes_outside_checkout(tmp_path):
    src = tmp_path / "src"  # a copy, so the build never writes into the checkout
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "outputs", "*.egg-info", "build", "__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    # torch and the other dependencies come from this environment's site-packages (a plain path
    # entry: the .pth files there, among them this checkout's editable hook, are not read), so
    # the test installs only the wheel built from the copy instead of a second torch
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))  # one folder in a venv
    Path(purelib, "dependencies.pth").write_text("".join(f"{path}\n" for path in ours))
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps"]
    subprocess.run([*pip, str(src)], check=True, timeout=900)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run([str(python), "-m", "cellmap_train", "model=3d_unet", "--cfg", "job"], cwd=elsewhere,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "spatial_dims: 3" in proc.stdout and "lr: 0.0001" in proc.stdout
    where = subprocess.run([str(python), "-c", "import cellmap_train, cellmap_train.conf as c; print(cellmap_train.__file__, list(c.__path__))"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout
    assert str(venv) in where and str(REPO) not in where
    help_text = subprocess.run([str(python), "-m", "cellmap_train", "--help"], cwd=elsewhere, env=env,
                               capture_output=True, text=True, check=True).stdout
    assert "2d_unet" in help_text and "experiment: " in help_text
