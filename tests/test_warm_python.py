"""The warm runner (tests/warm_python.py) must be indistinguishable from `python -m` for what the
tests look at: argv, cwd, environment, sys.path, torch's threads, output, exit status, signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from warm_python import COLD_ENV, alive, command

PROBE = '''
import json, os, signal, sys, threading, time
import torch
print(json.dumps({"argv": sys.argv[1:], "argv0": os.path.basename(sys.argv[0]), "cwd": os.getcwd(),
                  "path0": sys.path[0], "on_path": any(p.endswith("extra") for p in sys.path),
                  "env": os.environ.get("PROBE_VALUE"), "threads": torch.get_num_threads(),
                  "main": __name__, "spec": __spec__.name}))
print(os.getpid(), file=sys.stderr if "wait" in sys.argv else open(os.devnull, "w"), flush=True)
print("to stderr", file=sys.stderr)
if "wait" in sys.argv:
    signal.signal(signal.SIGTERM, lambda *_: (print("got SIGTERM", flush=True), sys.exit(7)))
    print("waiting", flush=True)
    time.sleep(60)
threading.Thread(target=lambda: (time.sleep(0.3), print("thread done", flush=True))).start()  # waited for at exit
sys.exit(int(sys.argv[1]))
'''

pytestmark = pytest.mark.skipif(sys.platform != "linux" or os.environ.get(COLD_ENV) == "1",
                                reason="no warm runs: off Linux, or CELLMAP_TRAIN_TEST_COLD=1")


@pytest.fixture
def probe(tmp_path):
    package = tmp_path / "extra" / "probe"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(PROBE)  # written after the server started: found all the same
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "extra"), "PROBE_VALUE": "seen", "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}
    return work, env


def test_a_warm_run_looks_like_python_m(probe):
    work, env = probe
    warm, cold = (subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=120)
                  for argv in (command("probe", "3", "x y"), [sys.executable, "-m", "probe", "3", "x y"]))
    assert (warm.returncode, warm.stdout, warm.stderr) == (cold.returncode, cold.stdout, cold.stderr)
    assert warm.returncode == 3 and warm.stdout.endswith("thread done\n") and warm.stderr == "to stderr\n"
    assert f'"cwd": "{work}", "path0": "{work}", "on_path": true, "env": "seen", "threads": 1' in warm.stdout


def test_signals_reach_the_run_and_a_killed_shim_takes_the_run_with_it(probe):
    work, env = probe
    proc = subprocess.Popen(command("probe", "0", "wait"), cwd=work, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("{") and proc.stdout.readline() == "waiting\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.communicate(timeout=30)[0] == "got SIGTERM\n" and proc.returncode == 7
    proc = subprocess.Popen(command("probe", "0", "wait"), cwd=work, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.readline()
    run = int(proc.stderr.readline())
    assert proc.stdout.readline() == "waiting\n"
    proc.kill()  # SIGKILL: the shim cannot pass it on; the server sees it gone and kills the run
    assert proc.communicate(timeout=30)[0] == ""  # the output ends: no process holds the pipe any more
    assert proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while alive(run) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(run)
