"""Helpers for the reliability tests: a tiny deterministic demo run, an in-process runner for
cheap failures (nothing trains), a subprocess runner that can be killed, and checks that an
error is one line and that existing files were not touched."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from faults import HERE, TINY
from inprocess import run_module


@pytest.fixture
def run_inprocess(demo_cache, tmp_path, monkeypatch):
    """`python -m cellmap_train ARGS` in this process (tests/inprocess.py), in tmp_path with this
    process's environment (monkeypatch it); returns (exit code, stderr + stdout). An exception
    other than SystemExit ends as in a real process: a traceback on stderr, exit 1."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CELLMAP_TRAIN_DEMO_DIR", str(demo_cache))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    def run(*args: str) -> tuple[int, str]:
        proc = run_module("cellmap_train", *args)
        return proc.returncode, proc.stderr + proc.stdout  # stderr first, then stdout

    return run


@pytest.fixture
def demo_copy(demo_root, tmp_path) -> Path:
    """A private copy of the demo cache (to corrupt); use with paths.demo_dir=<it>."""
    from cellmap_train.data.demo import DEMO_VERSION

    cache = tmp_path / "demo_copy"
    shutil.copytree(demo_root, cache / f"v{DEMO_VERSION}")
    return cache


@pytest.fixture
def spawn(demo_cache, tmp_path):
    """Start `python -m cellmap_train TINY... ARGS` (cwd tmp_path) as a Popen with piped output;
    `new_session=True` makes it lead its own process group (to signal it as a terminal does)."""

    def start(*args: str, env: dict | None = None, new_session: bool = False) -> subprocess.Popen:
        full_env = {**os.environ, "CELLMAP_TRAIN_DEMO_DIR": str(demo_cache), "PYTHONUNBUFFERED": "1",
                    "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]), **(env or {})}
        full_env.pop("HYDRA_FULL_ERROR", None)
        return subprocess.Popen([sys.executable, "-m", "cellmap_train", *TINY, *args], cwd=tmp_path, env=full_env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=new_session)

    return start


