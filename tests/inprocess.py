"""`python -m MODULE ARGS` run in the test's own process, for the tests whose point is what a run
prints, returns and writes rather than how a process ends (signals, process groups, sweeps'
launchers, the interpreter's start-up): the same entry (`runpy`, as `python -m` runs it), argv,
working folder, environment and PYTHONPATH, standard streams captured apart at the level of file
descriptors (so the output of the processes a run starts is in them too), the exit status taken
from SystemExit and an uncaught exception reported as the interpreter would (traceback, exit 1).

What a run changes in the process is put back afterwards: the environment, working folder, argv,
sys.path and the modules imported from PYTHONPATH, signal handlers, the root logger's handlers,
torch's threads and determinism switches, the random generators. Warnings are shown on stderr as a
fresh interpreter shows them (pytest would otherwise record them and hide them from the output)."""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import random
import runpy
import signal
import subprocess
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

# signals a run may take over (StopRequest, a sweep's job, the DataLoader's SIGCHLD)
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
# a fresh interpreter's warning filters (python -W / PYTHONWARNINGS unset), the first one wins
DEFAULT_FILTERS = [("default", DeprecationWarning, "__main__"), ("ignore", DeprecationWarning, None),
                   ("ignore", PendingDeprecationWarning, None), ("ignore", ImportWarning, None),
                   ("ignore", ResourceWarning, None)]
PACKAGE = str(Path(__file__).resolve().parents[1] / "cellmap_train")
KEPT_MODULE_ROOTS = tuple(dict.fromkeys(str(Path(p).resolve()) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)))


def run_module(module: str, *args: str, env: dict | None = None, cwd: Path | str | None = None) -> subprocess.CompletedProcess:
    """Run `python -m module args` here; `env` is the whole environment of the run (as Popen's)."""
    env = dict(os.environ if env is None else env)
    code = 0
    with _restored_process_state(env, cwd), _captured_streams() as output, _warnings_on_stderr():
        sys.argv = ["-m", *args]  # runpy's alter_sys sets argv[0] to the module's file, as python -m does
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as stop:
            if stop.code is None or isinstance(stop.code, int):
                code = stop.code or 0
            else:
                print(stop.code, file=sys.stderr)
                code = 1
        except BaseException as error:  # noqa: BLE001 - reported as the interpreter would
            traceback.print_exception(error, file=sys.stderr)
            code = 1
    return subprocess.CompletedProcess(["python", "-m", module, *args], code & 0xFF, *output)


@contextlib.contextmanager
def _captured_streams():
    """The run's stdout and stderr, at the level of file descriptors 1 and 2, as a subprocess with
    pipes would have them: Python's writes, C's, and those of the processes it starts (`csc train`
    starts the training, DataLoader workers print their errors), each stream in its order.
    Yields a list that holds (stdout, stderr) once the block is left."""
    files = [tempfile.TemporaryFile(), tempfile.TemporaryFile()]
    streams = (sys.stdout, sys.stderr)
    for stream in (*streams, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    output: list[str] = []
    try:
        for fd, file in zip((1, 2), files):
            os.dup2(file.fileno(), fd)
        # unbuffered, as PYTHONUNBUFFERED=1 has it: nothing is left in a buffer when the block ends
        sys.stdout, sys.stderr = (io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding="utf-8",
                                                   errors="backslashreplace", write_through=True) for fd in (1, 2))
        yield output
    finally:
        for wrapper in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                wrapper.flush()
        sys.stdout, sys.stderr = streams
        for fd, old in zip((1, 2), saved):
            os.dup2(old, fd)
            os.close(old)
        for file in files:
            file.seek(0)
            output.append(file.read().decode("utf-8", errors="replace"))
            file.close()


@contextlib.contextmanager
def _warnings_on_stderr():
    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    with warnings.catch_warnings():
        warnings.resetwarnings()
        for action, category, module in reversed(DEFAULT_FILTERS):
            warnings.filterwarnings(action, category=category, module=module or "")
        warnings.showwarning = show
        yield


@contextlib.contextmanager
def _restored_process_state(env: dict, cwd: Path | str | None):
    import numpy as np
    import torch

    saved_env, saved_cwd, saved_argv, saved_path = dict(os.environ), os.getcwd(), list(sys.argv), list(sys.path)
    saved_modules = set(sys.modules)
    saved_signals = {sig: signal.getsignal(sig) for sig in SIGNALS}
    saved_logging = _logging_state()
    saved_torch = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
                   torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark,
                   torch.backends.cudnn.deterministic)
    saved_random = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
    extra_path = [entry for entry in env.get("PYTHONPATH", "").split(os.pathsep) if entry]
    try:
        os.environ.clear()
        os.environ.update(env)
        if cwd is not None:
            os.chdir(cwd)
        sys.path[:] = [os.getcwd(), *extra_path, *saved_path[1:]]  # as python -m builds it
        importlib.invalidate_caches()  # a test's own modules, written a moment ago
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        sys.argv[:], sys.path[:] = saved_argv, saved_path
        for name in set(sys.modules) - saved_modules:  # a test's own modules: the next test may write others so named
            if _imported_from_outside(sys.modules[name]):
                del sys.modules[name]
        for sig, handler in saved_signals.items():
            if handler is not None:
                signal.signal(sig, handler)
        _restore_logging(saved_logging)
        torch.set_num_threads(saved_torch[0])
        torch.use_deterministic_algorithms(saved_torch[1], warn_only=saved_torch[2])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved_torch[3:]
        random.setstate(saved_random[0])
        np.random.set_state(saved_random[1])
        torch.random.set_rng_state(saved_random[2])


def _imported_from_outside(module) -> bool:
    """Imported from a test's own folder (PYTHONPATH, the working folder), not from the
    installation or this checkout."""
    file = getattr(module, "__file__", None)
    if not file:
        return False
    path = str(Path(file).resolve())
    return not path.startswith((*KEPT_MODULE_ROOTS, PACKAGE))


def _logging_state() -> tuple:
    """Hydra configures logging for each run (a file in the run folder, the run's stdout)."""
    loggers = [logging.getLogger(), *(logger for logger in logging.root.manager.loggerDict.values()
                                      if isinstance(logger, logging.Logger))]
    return logging.root.manager.disable, {logger: (list(logger.handlers), logger.level, logger.propagate, logger.disabled)
                                          for logger in loggers}


def _restore_logging(state: tuple) -> None:
    disable, saved = state
    for logger, (handlers, level, propagate, disabled) in saved.items():
        for handler in logger.handlers:
            if handler not in handlers:
                handler.close()
        logger.handlers[:], logger.level, logger.propagate, logger.disabled = handlers, level, propagate, disabled
    logging.disable(disable)
