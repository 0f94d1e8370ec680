"""Progress of a run: a tqdm bar (it/s, loss, ETA) on a terminal, plain lines in a log file."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


class Progress:
    """One bar for the whole run, so its ETA is the run's; `line` prints above the bar.

    When stderr is not a terminal (a job log, CI) a bar would write thousands of carriage
    returns, so a plain line is printed every `every` steps instead.
    """

    def __init__(self, total_steps: int, done_steps: int, enabled: bool = True, every: int = 50):
        self.total, self.done, self.every = total_steps, done_steps, every
        self.enabled = enabled
        self.interactive = enabled and sys.stderr.isatty()
        self.start, self.start_done = time.perf_counter(), done_steps
        self.epoch = ""
        self.bar = tqdm(total=total_steps, initial=done_steps, unit="it", dynamic_ncols=True, smoothing=0.1,
                        disable=not self.interactive)

    def set_epoch(self, epoch: int, epochs: int) -> None:
        self.bar.set_description(f"epoch {epoch}/{epochs}")
        self.epoch = f"epoch {epoch}/{epochs}"

    def update(self, loss: float, smoothed: float) -> None:
        self.done += 1
        if self.interactive:
            self.bar.set_postfix(loss=f"{loss:.4f}", smooth=f"{smoothed:.4f}", refresh=False)
            self.bar.update()
        elif self.enabled and (self.done % self.every == 0 or self.done == self.total):
            rate = (self.done - self.start_done) / max(time.perf_counter() - self.start, 1e-9)
            eta = tqdm.format_interval((self.total - self.done) / rate) if rate > 0 else "?"
            print(f"{self.epoch} step {self.done}/{self.total}: loss {loss:.4f} (smoothed {smoothed:.4f}) "
                  f"{rate:.2f} it/s, ETA {eta}", flush=True)

    def line(self, text: str) -> None:
        """Printed above the bar (tqdm.write), or as is without one."""
        if self.interactive:
            tqdm.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        self.bar.close()
