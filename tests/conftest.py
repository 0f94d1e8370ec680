"""Shared fixtures: one demo dataset per test session, and a runner for real
`python -m cellmap_train` subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    """Each xdist test process, and every run it starts, gets its share of the cores as torch
    threads. Left at torch's default (every core) the test processes' runs oversubscribe the cores,
    and OpenMP threads spinning for each other made two demo runs side by side 3.6x slower."""
    if "PYTEST_XDIST_WORKER" in os.environ:  # not in xdist's controller: its workers would inherit its value
        from cellmap_train.cores import usable_cores

        workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, usable_cores() // workers)))


def pytest_collection_modifyitems(items):
    """Longest modules first, so that none of them ends the suite alone: modules with a test marked
    `longest` (the README demo run: a minute alone, three beside other tests), then those with a
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


@pytest.fixture
def run_cli(demo_cache, tmp_path):
    """Run `python -m cellmap_train ARGS` in a subprocess; runs land under tmp_path/outputs."""

    def run(*args: str, module: str = "cellmap_train", env: dict | None = None, timeout: float = 600,
            cwd: Path | None = None, check: bool = False) -> subprocess.CompletedProcess:
        full_env = {**os.environ, "CELLMAP_TRAIN_DEMO_DIR": str(demo_cache), "PYTHONUNBUFFERED": "1", **(env or {})}
        full_env.pop("HYDRA_FULL_ERROR", None) if not (env or {}).get("HYDRA_FULL_ERROR") else None
        proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd or tmp_path, env=full_env,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-4000:]}")
        return proc

    return run


@pytest.fixture
def compose_cfg(tmp_path):
    """Compose the config tree with the Compose API (no run), run folder = tmp_path."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from cellmap_train.config import config_dir

    def compose_with(*overrides: str):
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose("config", overrides=[f"paths.output_dir={tmp_path}", *overrides], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)  # what a real run does; ${hydra:...} needs it
        return cfg

    return compose_with


# ---- S3: a real moto server on 127.0.0.1 (no mocks of s3fs or zarr)
S3_TEST_CREDENTIALS = {"key": "testing", "secret": "testing"}
MOTO_LOG = "moto_server.log"  # one request per line, as the server logs it


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """`python -m moto.server` on a free local port; yields its URL, stops it afterwards."""
    import socket
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(tmp_path_factory.getbasetemp() / MOTO_LOG, "w")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    else:
        server.kill()
        raise RuntimeError(f"moto server did not start on {url}")
    yield url
    server.terminate()
    server.wait(timeout=10)
    log.close()


@pytest.fixture(scope="session")
def s3_demo_bucket(s3_endpoint, demo_root) -> str:
    """A public-read copy of the demo datasets in bucket `cellmap-demo`; returns s3://cellmap-demo."""
    import s3fs

    fs = s3fs.S3FileSystem(**S3_TEST_CREDENTIALS, client_kwargs={"endpoint_url": s3_endpoint},
                           s3_additional_kwargs={"ACL": "public-read"}, skip_instance_cache=True)
    fs.mkdir("cellmap-demo", acl="public-read")
    for path in sorted(demo_root.rglob("*")):  # anonymous readers need every object public-read
        if path.is_file():
            fs.put_file(str(path), f"cellmap-demo/{path.relative_to(demo_root).as_posix()}")
    return "s3://cellmap-demo"


@pytest.fixture
def s3_requests(s3_endpoint, tmp_path_factory):
    """`requests()`: ("GET", "/bucket/key") of each request the moto server answered since the
    last call (the first call: since this test began)."""
    import re
    import time

    log = tmp_path_factory.getbasetemp() / MOTO_LOG
    seen = [len(log.read_text().splitlines())]

    def requests() -> list[tuple[str, str]]:
        lines = log.read_text().splitlines()
        for _ in range(20):  # the server logs a request after answering it: wait until the log is still
            time.sleep(0.1)
            if len(latest := log.read_text().splitlines()) == len(lines):
                break
            lines = latest
        new, seen[0] = lines[seen[0]:], len(lines)
        plain = (re.sub(r"\x1b\[[0-9;]*m", "", line) for line in new)  # 4xx answers are logged in colour
        return [match.groups() for line in plain if (match := re.search(r'"([A-Z]+) (\S+) HTTP/', line))]

    return requests
