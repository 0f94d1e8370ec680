"""Shared fixtures: one demo dataset per test session, a runner of `python -m cellmap_train` in
this process (`run_main`, tests/inprocess.py) and one of real subprocesses (`run_cli`, for what
needs a process: its exit as the shell sees it, signals, sweeps' launchers, a fresh interpreter)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from inprocess import run_module

REPO = Path(__file__).resolve().parents[1]


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one test process per core plus one, so that a core is not left idle while a test
    waits (on a signal, a paused step, a retry's back-off); --maxprocesses caps it. On a 2-core VM
    whose speed drifts the suite took 769 and 847 s with 3 test processes, 843 and 987 s with 2
    (vmstat: 3 % of the CPU idle against 7 %)."""
    from cellmap_train.host.cores import usable_cores

    return usable_cores() + 1


def pytest_configure(config):
    """Each xdist test process, and every run it starts, gets its share of the cores as torch
    threads. Left at torch's default (every core) the test processes' runs oversubscribe the cores,
    and OpenMP threads spinning for each other made two demo runs side by side 3.6x slower."""
    if "PYTEST_XDIST_WORKER" in os.environ:  # not in xdist's controller: its workers would inherit its value
        from cellmap_train.host.cores import usable_cores

        workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, usable_cores() // workers)))


def pytest_collection_modifyitems(items):
    """Longest modules first, so that none of them ends the suite alone: modules with a test marked
    `longest` (the README demo run: 2-3 minutes alone, 5-8 beside other tests), then those with a
    `slow` test, then the rest. pytest-xdist hands out whole modules in this order (with
    --no-loadscope-reorder; by default it would hand out the modules with most tests first, and
    the demo's module, with three, came last). Whole modules move, in their own order, so their
    module fixtures are still made once when the suite runs in one process (`-n0`)."""
    def module(item) -> str:
        return item.nodeid.split("::")[0]

    longest, slow = ({module(item) for item in items if item.get_closest_marker(m)} for m in ("longest", "slow"))
    items.sort(key=lambda item: (module(item) not in longest, module(item) not in slow))


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory) -> Path:
    """A demo cache folder shared by the session (generated once, ~3 s)."""
    from cellmap_train.data.demo import ensure_demo_data

    cache = tmp_path_factory.mktemp("demo_cache")
    ensure_demo_data(cache)
    return cache


@pytest.fixture(scope="session")
def demo_root(demo_cache) -> Path:
    """The demo datasets themselves (<root>/<ds>/<ds>.zarr/...)."""
    from cellmap_train.data.demo import DEMO_VERSION

    return demo_cache / f"v{DEMO_VERSION}"


def _run_env(demo_cache: Path, env: dict | None) -> dict:
    full_env = {**os.environ, "CELLMAP_TRAIN_DEMO_DIR": str(demo_cache), "PYTHONUNBUFFERED": "1", **(env or {})}
    if not (env or {}).get("HYDRA_FULL_ERROR"):
        full_env.pop("HYDRA_FULL_ERROR", None)
    return full_env


def _checked(proc: subprocess.CompletedProcess, check: bool) -> subprocess.CompletedProcess:
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture
def run_cli(demo_cache, tmp_path):
    """Run `python -m cellmap_train ARGS` in a subprocess (a fresh interpreter: ~3-6 s of start-up
    and imports); runs land under tmp_path/outputs. `cold` is accepted for older callers: every
    run here is cold."""

    def run(*args: str, module: str = "cellmap_train", env: dict | None = None, timeout: float = 600,
            cwd: Path | None = None, check: bool = False, cold: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd or tmp_path, env=_run_env(demo_cache, env),
                              capture_output=True, text=True, timeout=timeout)
        return _checked(proc, check)

    return run


@pytest.fixture
def run_main(demo_cache, tmp_path):
    """`run_cli` in this process (tests/inprocess.py): the same entry, arguments, folder and
    environment, and the same CompletedProcess back (returncode, stdout, stderr), without an
    interpreter's start-up. For what a run prints and writes; `run_cli` where the process itself
    is the point."""

    def run(*args: str, module: str = "cellmap_train", env: dict | None = None, timeout: float = 600,
            cwd: Path | None = None, check: bool = False) -> subprocess.CompletedProcess:
        return _checked(run_module(module, *args, env=_run_env(demo_cache, env), cwd=cwd or tmp_path), check)

    return run


@pytest.fixture
def compose_cfg(tmp_path):
    """Compose the config tree with the Compose API (no run), run folder = tmp_path."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from cellmap_train.config.location import config_dir

    def compose_with(*overrides: str):
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose("config", overrides=[f"paths.output_dir={tmp_path}", *overrides], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)  # what a real run does; ${hydra:...} needs it
        return cfg

    return compose_with


# ---- S3: a real moto server on 127.0.0.1 (no mocks of s3fs or zarr)
MOTO_LOG = "moto_server.log"  # one request per line, as the server logs it


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """`python -m moto.server` on a free local port; yields its URL, stops it afterwards."""
    from cellmap_train.data.local_s3 import start_server, stop_server

    server, url = start_server(tmp_path_factory.getbasetemp() / MOTO_LOG)
    yield url
    stop_server(server)


@pytest.fixture(scope="session")
def s3_demo_bucket(s3_endpoint, demo_root) -> str:
    """A public-read copy of the demo datasets in bucket `cellmap-demo`; returns s3://cellmap-demo."""
    from cellmap_train.data.local_s3 import upload_demo

    return upload_demo(s3_endpoint, demo_root)


@pytest.fixture
def s3_requests(s3_endpoint, tmp_path_factory):
    """`requests()`: ("GET", "/bucket/key") of each request the moto server answered since the
    last call (the first call: since this test began)."""
    from cellmap_train.data.local_s3 import requests_in, settled_lines

    log = tmp_path_factory.getbasetemp() / MOTO_LOG
    seen = [len(log.read_text().splitlines())]

    def requests() -> list[tuple[str, str]]:
        lines = settled_lines(log)
        new, seen[0] = lines[seen[0]:], len(lines)
        return requests_in(new)

    return requests
