"""Progress of a run: a tqdm bar (it/s, loss, ETA) on a terminal, plain lines in a log file."""

from __future__ import annotations

import sys
import time
from typing import Callable

from tqdm import tqdm


class Progress:
    """One bar for the whole run, so its ETA is the run's; `line` prints above the bar.

    When stderr is not a terminal (a job log, CI) a bar would write thousands of carriage
    returns, so a plain line is printed every `every` steps, and at the first step after
    `every_seconds` without one (a 3D step on a CPU can take seconds: 50 of them were minutes of
    silence). On a terminal the bar is drawn there and the same plain lines go to the run's log
    file alone, when stdout writes one (`log_only`, see cellmap_train/run/log.py).
    `clock` (seconds, monotonic) is there for tests.
    """

    def __init__(self, total_steps: int, done_steps: int, enabled: bool = True, every: int = 50,
                 every_seconds: float | None = 30.0, clock: Callable[[], float] = time.monotonic):
        self.total, self.done, self.every, self.every_seconds = total_steps, done_steps, every, every_seconds
        self.enabled = enabled
        terminal = getattr(sys.stderr, "terminal", sys.stderr)  # past the run log's copy, if any
        self.interactive = enabled and terminal.isatty()
        self.log_only = getattr(sys.stdout, "log_only", None) if self.interactive else None
        self.clock = clock
        self.start, self.start_done = clock(), done_steps
        self.last_line = self.start
        self.epoch = ""
        self.bar = tqdm(total=total_steps, initial=done_steps, unit="it", dynamic_ncols=True, smoothing=0.1,
                        disable=not self.interactive, file=terminal)

    def set_epoch(self, epoch: int, epochs: int) -> None:
        self.bar.set_description(f"epoch {epoch}/{epochs}")
        self.epoch = f"epoch {epoch}/{epochs}"

    def update(self, loss: float, smoothed: float) -> None:
        self.done += 1
        if self.interactive:
            self.bar.set_postfix(loss=f"{loss:.4f}", smooth=f"{smoothed:.4f}", refresh=False)
            self.bar.update()
        if not self.enabled or not self.line_due():
            return
        self.last_line = now = self.clock()
        rate = (self.done - self.start_done) / max(now - self.start, 1e-9)
        eta = tqdm.format_interval((self.total - self.done) / rate) if rate > 0 else "?"
        text = (f"{self.epoch} step {self.done}/{self.total}: loss {loss:.4f} (smoothed {smoothed:.4f}) "
                f"{rate:.2f} it/s, ETA {eta}")
        if not self.interactive:
            print(text, flush=True)
        elif self.log_only is not None:
            self.log_only(text + "\n")

    def line_due(self) -> bool:
        """Every `every` steps, the last one, and the first after `every_seconds` without a line."""
        if self.done % self.every == 0 or self.done == self.total:
            return True
        return self.every_seconds is not None and self.clock() - self.last_line >= self.every_seconds

    def line(self, text: str) -> None:
        """Printed above the bar (which is cleared and drawn again below it), or as is without one."""
        if self.interactive:
            self.bar.clear()
            print(text, flush=True)
            self.bar.refresh()
        else:
            print(text, flush=True)

    def close(self) -> None:
        self.bar.close()
