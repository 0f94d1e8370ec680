"""`python -m cellmap_train ...` for the tests, without paying Python's start-up each time.

Most of the suite's time went into starting interpreters: every run imports torch and
torch._dynamo (the optimizer imports it), 6-9 s of one core on a 2-core CI machine, ~180 times.
Here, each test process starts one server that imports all of that once; a run is a fork of it
that then executes `cellmap_train` as `python -m` does (argv, cwd, environment, sys.path, the
standard streams, the exit status), so the code under test is the same and runs in its own process.

`command(module, *args)` is a drop-in for `[sys.executable, "-m", module, *args]` in
subprocess.run / Popen: it starts a small shim (no imports beyond the standard library) that hands
its standard streams, cwd and environment to the server, forwards the signals it gets to the run,
and exits as the run exits (the same code, or the same signal). A shim killed by SIGKILL, or by
subprocess's timeout, takes the run with it: the server kills a run whose shim went away.
What is not the same as a fresh interpreter, so tests of those keep real `python -m` (the README
demo run, the kill/resume tests that signal a process group, the install and safety tests): process
groups (the run is not in the shim's), and anything decided once per interpreter before the fork
(an import-time setting, a cached temporary folder). CELLMAP_TRAIN_TEST_COLD=1 makes `command` return the real command everywhere,
as it is off Linux (the server listens on an abstract Unix socket).

Run as a script: `warm_python.py serve NAME` (the server), `warm_python.py shim NAME PID LOG MODULE
ARGS...` (the run's stand-in; PID and LOG are the server's, to report a server that died).
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COLD_ENV = "CELLMAP_TRAIN_TEST_COLD"
# imported once by the server: what every run imports, the slowest first
PRELOAD = ["torch", "torch._dynamo", "torch.utils.tensorboard", "hydra", "omegaconf", "zarr", "s3fs", "pandas",
           "cellmap_train.train", "cellmap_train.cli"]
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
_server: dict = {}


def command(module: str, *args: str) -> list[str]:
    """The command line that runs `python -m module args` (warm unless CELLMAP_TRAIN_TEST_COLD=1)."""
    if os.environ.get(COLD_ENV) == "1" or sys.platform != "linux":
        return [sys.executable, "-m", module, *args]
    if not _server:
        _start_server()
    server = _server["proc"]
    return [sys.executable, "-I", "-S", __file__, "shim", _server["name"], str(server.pid), _server["log"], module, *args]


def _start_server() -> None:
    """One server per test process, started at its first warm run and stopped when it exits."""
    name = f"cellmap-train-warm-{os.getpid()}-{time.monotonic_ns()}"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}  # a run sets its own
    with tempfile.NamedTemporaryFile("w", prefix="cellmap-train-warm-", suffix=".log", delete=False) as log:
        proc = subprocess.Popen([sys.executable, "-u", __file__, "serve", name], env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log)  # read by a shim if the server dies
    _server.update(name=name, proc=proc, log=log.name)
    atexit.register(_stop_server)


def _stop_server() -> None:
    proc = _server["proc"]
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    Path(_server["log"]).unlink(missing_ok=True)


# ---- the server: imports once, forks a run per request
def serve(name: str) -> None:
    import importlib
    import pkgutil
    import selectors

    for module in PRELOAD:
        importlib.import_module(module)
    import cellmap_train

    for info in pkgutil.walk_packages(cellmap_train.__path__, "cellmap_train."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    parent = os.getppid()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind("\0" + name)  # abstract: no file to clean up, no path-length limit
    listener.listen(64)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    runs: dict[int, socket.socket] = {}  # run pid -> its shim's connection
    while os.getppid() == parent:  # the test process is gone: so is the server
        for key, _ in selector.select(timeout=0.1):
            sock = key.fileobj
            if sock is listener:
                selector.register(listener.accept()[0], selectors.EVENT_READ)  # data: its run's pid, once forked
                continue
            pid = key.data
            if pid is None:
                request, fds = _receive(sock)
                if request is None:  # the shim went away before asking
                    selector.unregister(sock)
                    sock.close()
                    continue
                pid = os.fork()
                if pid == 0:
                    selector.close()
                    listener.close()
                    for other in list(runs.values()) + [sock]:
                        other.close()
                    _run(request, fds)  # never returns
                for fd in fds:
                    os.close(fd)
                runs[pid] = sock
                selector.modify(sock, selectors.EVENT_READ, pid)
                sock.send(b"pid %d" % pid)
            else:  # the shim hung up while its run goes on: it was killed, so is the run
                selector.unregister(sock)
                _kill(pid)
        _reap(runs, selector)


def _receive(sock: socket.socket) -> tuple[dict | None, list[int]]:
    try:
        data, fds, _, _ = socket.recv_fds(sock, 1 << 20, 3)
    except OSError:
        return None, []
    return (json.loads(data) if data else None), fds


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _reap(runs: dict[int, socket.socket], selector) -> None:
    while runs:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        sock = runs.pop(pid, None)
        if sock is None:
            continue
        try:
            sock.send(b"exit %d" % os.waitstatus_to_exitcode(status))
        except OSError:
            pass
        try:
            selector.unregister(sock)
        except (KeyError, ValueError):
            pass
        sock.close()


def _run(request: dict, fds: list[int]) -> None:
    """In the forked child: become `python -m MODULE ARGS` started by the shim, then exit as it would."""
    import importlib
    import runpy
    import threading

    import torch

    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    env = request["env"]
    # sys.path as `python -m` builds it: the working folder, PYTHONPATH, then the installation's
    python_path = [entry for entry in env.get("PYTHONPATH", "").split(os.pathsep) if entry]
    sys.path[:] = [os.getcwd(), *python_path, *sys.path[1:]]
    importlib.invalidate_caches()  # files written since the server started (a test's own package)
    unbuffered = bool(env.get("PYTHONUNBUFFERED"))
    sys.stdout.reconfigure(line_buffering=os.isatty(1), write_through=unbuffered)  # the server's are raw (-u)
    sys.stderr.reconfigure(line_buffering=True, write_through=unbuffered)
    # libgomp read OMP_NUM_THREADS when the server loaded it: apply the run's own value
    threads = env.get("OMP_NUM_THREADS", "")
    torch.set_num_threads(int(threads) if threads.isdigit() and int(threads) > 0 else len(os.sched_getaffinity(0)))
    module, *args = request["argv"]
    sys.argv = ["-m", *args]
    code, interrupted = 0, False
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            code = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    except BaseException as error:  # noqa: BLE001 - reported as the interpreter would
        sys.excepthook(type(error), error, error.__traceback__)
        code, interrupted = 1, isinstance(error, KeyboardInterrupt)
    # the interpreter's own shut-down: non-daemon threads, atexit (logging's flush among them), streams
    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if interrupted:  # an uncaught Ctrl-C ends the interpreter by SIGINT
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code & 0xFF)


# ---- the shim: what the test started; stands in for the run
def shim(name: str, server_pid: int, server_log: str, module: str, args: list[str]) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    while True:  # the server may still be importing torch
        try:
            sock.connect("\0" + name)
            break
        except (ConnectionRefusedError, FileNotFoundError):
            if not alive(server_pid):
                log = Path(server_log).read_text(errors="replace")[-3000:]
                sys.exit(f"warm_python: the server (pid {server_pid}) ended before it listened; its output:\n{log}")
            time.sleep(0.05)
    run_pid: list[int] = []
    pending: list[int] = []

    def forward(signum, _frame) -> None:
        if not run_pid:
            pending.append(signum)
            return
        try:
            os.kill(run_pid[0], signum)
        except ProcessLookupError:  # the run has just ended; its status is on the way
            pass

    for signum in FORWARDED:
        signal.signal(signum, forward)
    request = json.dumps({"argv": [module, *args], "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    socket.send_fds(sock, [request], [0, 1, 2])
    while True:
        try:
            message = sock.recv(64)
        except InterruptedError:
            continue
        if not message:
            sys.exit("warm_python: the server went away during the run")
        word, value = message.split()
        if word == b"pid":
            run_pid.append(int(value))
            for signum in pending:
                os.kill(run_pid[0], signum)
        else:
            code = int(value)
            if code < 0:  # ended by a signal: end the same way
                signal.signal(-code, signal.SIG_DFL)
                os.kill(os.getpid(), -code)
            os._exit(code)


def alive(pid: int) -> bool:
    """Whether `pid` runs (not gone, not a zombie its parent has yet to reap)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        shim(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6:])
