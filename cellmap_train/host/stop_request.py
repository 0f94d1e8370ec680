"""SIGTERM (a cluster's scheduler) and Ctrl-C (SIGINT) end a run cleanly: the loop finishes the
step in progress, writes a checkpoint of it and stops with one line. A second signal is not
caught again, so a stuck run can still be stopped. In a --multirun the jobs after the stopped
one are not run (`sweep_stop.py`)."""

from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)
# what a second signal does in a process started with it ignored (submitit's controller starts its
# job so, `sweep_stop.keep_submitit_controllers_out_of_ctrl_c`): stop at once, as anywhere else
_DEFAULTS = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}


class StopRequest:
    """While active (a `with` block in the main thread), records the first SIGTERM/SIGINT."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._record) for sig in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _record(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name
        for sig, handler in self._previous.items():  # the next signal acts as it did before
            signal.signal(sig, _DEFAULTS[sig] if handler == signal.SIG_IGN else handler)
        self.on_first_signal()

    def on_first_signal(self) -> None:
        """Called in the signal handler, once."""

    @property
    def requested(self) -> bool:
        return self.signal_name is not None
