"""Helpers for the reliability tests: a tiny deterministic demo run, an in-process runner for
cheap failures (nothing trains), a subprocess runner that can be killed, and checks that an
error is one line and that existing files were not touched."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from faults import HERE, TINY
from warm_python import command


@pytest.fixture
def run_inprocess(demo_cache, tmp_path, monkeypatch):
    """`python -m cellmap_train ARGS` in this process (for runs that stop before training);
    returns (exit code, stderr + stdout). Any exception other than SystemExit fails the test."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CELLMAP_TRAIN_DEMO_DIR", str(demo_cache))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    def run(*args: str) -> tuple[int, str]:
        from cellmap_train.train import main

        monkeypatch.setattr(sys, "argv", ["cellmap_train", *args])
        err, out = io.StringIO(), io.StringIO()
        code = 0
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                main()
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        return code, err.getvalue() + out.getvalue()  # stderr first, then stdout

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
    `new_session=True` makes it lead its own process group (to signal it as a terminal does). The
    run is a fork of a warm interpreter (tests/warm_python.py: signals to the Popen's pid reach it,
    SIGKILL included) unless it must lead a process group: a warm run is in its server's."""

    def start(*args: str, env: dict | None = None, new_session: bool = False) -> subprocess.Popen:
        full_env = {**os.environ, "CELLMAP_TRAIN_DEMO_DIR": str(demo_cache), "PYTHONUNBUFFERED": "1",
                    "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]), **(env or {})}
        full_env.pop("HYDRA_FULL_ERROR", None)
        argv = [sys.executable, "-m", "cellmap_train", *TINY, *args] if new_session else command("cellmap_train", *TINY, *args)
        return subprocess.Popen(argv, cwd=tmp_path, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=new_session)

    return start


