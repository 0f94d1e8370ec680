"""The run's log file (`<run folder>/train.log`): everything the run prints, as it printed it.

Hydra's own job log holds only `logging` records, and the run speaks mostly with print (progress
lines, notes, warnings, the closing lines, the one-line error): its `train.log` was empty. The
`RunLog` callback copies stdout and stderr into the file for the job's lifetime, and the logging
records (Hydra's file handler is left out of conf/hydra/job_logging/cellmap_train.yaml, so that
a run folder it cannot write is reported by the run in one line, not by logging's traceback).

Only rank 0 of a torchrun writes it (the ranks share the folder); each job of a sweep writes its
own folder's, whichever process runs the job. A log that cannot be opened or written (a full or
read-only disk) is left out without a word: the run's own writes stop it in one line naming the
file. On a terminal, the progress bar goes to the terminal alone and the log gets the plain
progress lines (`log_only`), not the bar's carriage returns.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import IO, Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cellmap_train.host.torchrun import is_rank_zero

LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's job log format


class Tee:
    """A text stream writing to `terminal` (the stream it replaces) and to the log file; the log
    is dropped at its first failed write, the terminal never."""

    def __init__(self, terminal: IO[str], log: IO[str]):
        self.terminal, self.log = terminal, log

    def write(self, text: str) -> int:
        written = self.terminal.write(text)
        self.log_only(text)
        return written

    def log_only(self, text: str) -> None:
        if self.log is None:
            return
        try:
            self.log.write(text)
            self.log.flush()
        except (OSError, ValueError):  # full disk, closed file: the terminal still gets every line
            self.log = None

    def flush(self) -> None:
        self.terminal.flush()

    def isatty(self) -> bool:
        return self.terminal.isatty()

    def __getattr__(self, name: str) -> Any:  # fileno, encoding, buffer, ...: the terminal's
        return getattr(self.terminal, name)


class _LogFileHandler(logging.StreamHandler):
    """Logging records into the log file; a write that fails is dropped (the terminal has it)."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


class RunLog(Callback):
    """Copies the job's stdout, stderr and logging records into `<run folder>/<job name>.log`."""

    def __init__(self) -> None:
        self.file: IO[str] | None = None
        self.streams: tuple[Any, Any] | None = None
        self.handler: logging.Handler | None = None

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.stop()  # a job before this one in the same process that did not end through on_job_end
        if not is_rank_zero():
            return
        path = Path(config.hydra.runtime.output_dir) / f"{config.hydra.job.name}.log"
        try:
            self.file = open(path, "a", encoding="utf-8", errors="replace", buffering=1)
        except OSError:
            return
        self.streams = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = Tee(sys.stdout, self.file), Tee(sys.stderr, self.file)
        self.handler = _LogFileHandler(self.file)
        self.handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logging.getLogger().addHandler(self.handler)

    def on_job_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.stop()

    def stop(self) -> None:
        if self.streams is not None:
            sys.stdout.flush()
            sys.stderr.flush()
            sys.stdout, sys.stderr = self.streams
            self.streams = None
        if self.handler is not None:
            logging.getLogger().removeHandler(self.handler)
            self.handler = None
        if self.file is not None:
            try:
                self.file.close()
            except OSError:
                pass
            self.file = None
