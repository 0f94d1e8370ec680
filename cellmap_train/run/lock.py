"""One run per run folder. Two runs in one folder (a Slurm job submitted twice, `csc train
config.py` started twice) would write checkpoints of the same names over each other and
interleave their TensorBoard events, and both end "ok". A run holds its folder with an OS file
lock (flock on `.cellmap_train.lock` in it) for its lifetime: the kernel releases it when the
process ends however it ends, so a `kill -9` never leaves a folder stuck. A second run stops
before Hydra writes anything there (`.hydra/`, `train.log`), in one line naming the holder.

Hydra calls the `RunLock` callback before it writes a run's files: on_run_start (a run),
on_multirun_start (a sweep's folder, in the launching process) and on_job_start (each sweep
job's own folder, wherever the job runs). DDP ranks of one run share its folder: only rank 0
takes the lock."""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from cellmap_train.errors import UserError
from cellmap_train.files import RunWriteError, write_error
from cellmap_train.host.torchrun import is_rank_zero

LOCK_FILE = ".cellmap_train.lock"
_held: dict[str, IO[str]] = {}  # folder -> its open lock file, in this process


class RunFolderBusy(UserError):
    pass


def _holder(handle: IO[str], tries: int = 20) -> str:
    """What the holder wrote in the lock file (pid, host, start): it writes right after taking
    the lock, so an empty file is read again a few times."""
    for _ in range(tries):
        handle.seek(0)
        text = handle.read().strip()
        if text:
            return text
        time.sleep(0.05)
    return "a process that has not said who it is yet"


def hold(folder: str | os.PathLike) -> None:
    """Take `folder` for this process (made if missing) until `release`, or refuse in one line."""
    path = Path(folder).resolve()
    if str(path) in _held or not is_rank_zero():
        return
    lock = path / LOCK_FILE
    Path(folder).mkdir(parents=True, exist_ok=True)  # its error names the folder as the user wrote it
    try:
        handle = open(lock, "a+")  # a+: never truncates what a holder wrote
    except OSError as err:
        raise RunWriteError(write_error(lock, err, "cannot use the run folder")) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(handle)
        handle.close()
        raise RunFolderBusy(f"{path}: another run is using this folder ({holder}); wait for it to end, "
                            f"or give this one its own hydra.run.dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {datetime.now().isoformat(' ', 'seconds')}\n")
    handle.flush()
    _held[str(path)] = handle


def release(folder: str | os.PathLike | None = None) -> None:
    """Let `folder` go (every folder this process holds when None): a sweep's jobs run one
    after the other in one process, and tests run several runs in theirs."""
    keys = list(_held) if folder is None else [str(Path(folder).resolve())]
    for key in keys:
        handle = _held.pop(key, None)
        if handle is not None:
            handle.close()  # closing the last descriptor releases the flock


def hold_or_exit(folder: str | os.PathLike) -> None:
    """`hold`, or the one-line error and exit 1: Hydra turns a callback's exception into a
    warning and goes on, so only SystemExit stops it before it writes the run's files."""
    try:
        hold(folder)
    except UserError as err:
        print(f"cellmap_train: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as err:  # a folder that cannot be made (a file in its path, no permission)
        print(f"cellmap_train: error: {err.filename or folder}: {err.strerror or err}", file=sys.stderr)
        raise SystemExit(1) from None


class RunLock(Callback):
    """Hydra callback: hold the run's (the sweep's, each job's) folder while it runs."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        hold_or_exit(str(config.hydra.run.dir))

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        release(str(config.hydra.run.dir))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        hold_or_exit(str(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        release(str(config.hydra.sweep.dir))

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:  # a single run's folder is held already
            hold_or_exit(config.hydra.runtime.output_dir)

    def on_job_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:
            release(config.hydra.runtime.output_dir)
