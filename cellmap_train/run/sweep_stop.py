"""Ctrl-C or a scheduler's SIGTERM stops a whole --multirun, not just the job it lands in.

A sweep's job takes signals from its start (`job.run_job`). One that a signal stops
checkpoints its step (the engine does that) and leaves STOP_FILE in the sweep folder; a job that
starts after it finds the file and is recorded as skipped, so the summary lists every job and
the sweep ends at once.

When the jobs run in other processes (joblib, submitit's local launcher), the launching process
catches the first signal too: it leaves the file and waits for its jobs to checkpoint instead of
killing them on the spot. The running jobs watch for the file (`SweepJobStop`), so a signal to
the launching process alone (`kill <pid>`) stops them as well as a terminal's Ctrl-C or a
scheduler's SIGTERM to every process does. A second signal acts as it did before.

The file is removed when a sweep starts, so continuing one in the same folder runs what is left.
On Slurm each job is its own allocation: a timeout or a preemption stops that job only.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

from cellmap_train.files import atomic_write
from cellmap_train.host.stop_request import SIGNALS, StopRequest

STOP_FILE = ".stopped"


def stops_the_sweep(launcher_target: str) -> bool:
    """Whether a signal to one job means the whole sweep: the jobs run on this machine."""
    return "slurm" not in launcher_target.lower()


def runs_jobs_in_this_process(launcher_target: str) -> bool:
    return launcher_target.endswith("BasicLauncher")


def jobs_run_in_other_processes_here(launcher_target: str) -> bool:
    """joblib, submitit's local launcher: the launching process waits for its jobs on a first
    signal (`StopSweepOnSignal`) and they watch for the sweep's mark (`SweepJobStop`)."""
    return stops_the_sweep(launcher_target) and not runs_jobs_in_this_process(launcher_target)


def mark_stopped(sweep_dir: str | Path, signal_name: str) -> None:
    with atomic_write(Path(sweep_dir) / STOP_FILE) as handle:
        handle.write(signal_name + "\n")


def stopped_by(sweep_dir: str | Path) -> str | None:
    """The signal that stopped the sweep in `sweep_dir`, or None."""
    try:
        return (Path(sweep_dir) / STOP_FILE).read_text().strip() or "a signal"
    except FileNotFoundError:
        return None


class SweepJobStop(StopRequest):
    """A sweep's job run by another process's launcher: stops on its own signal, or when the sweep
    has been marked stopped (the launching process got a signal that its workers did not)."""

    CHECK_EVERY_S = 1.0  # a stat a second: free next to a step, and the jobs stop within a second

    def __init__(self, sweep_dir: str | Path):
        super().__init__()
        self.sweep_dir = Path(sweep_dir)
        self._next_check = 0.0

    @property
    def requested(self) -> bool:
        if self.signal_name is None and time.monotonic() >= self._next_check:
            self._next_check = time.monotonic() + self.CHECK_EVERY_S
            self.signal_name = stopped_by(self.sweep_dir)
        return self.signal_name is not None


def job_stop_request(launcher_target: str, sweep_dir: str | Path) -> StopRequest:
    """What a --multirun job holds while it trains (`job.run_job`)."""
    if jobs_run_in_other_processes_here(launcher_target):
        return SweepJobStop(sweep_dir)
    return StopRequest()


def ignore_signals_between_jobs() -> None:
    """In a joblib worker once its job is done: a signal must not kill the idle worker (the pool
    would break and take the running jobs with it). The next job's own handler takes signals
    while it trains; the pool ends its workers with SIGKILL when it is torn down."""
    if threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


def keep_submitit_controllers_out_of_ctrl_c(launcher_target: str) -> None:
    """submitit's local launcher runs each job under a controller process. On a terminal's Ctrl-C
    that controller dies of KeyboardInterrupt, sends its job a second SIGINT and a SIGKILL one
    second later, before a step of any size is checkpointed, and the launcher then fails on the
    missing result (no summary). Started with SIGINT ignored (a disposition that survives exec),
    the controller leaves Ctrl-C to its job, which gets it from the terminal, or sees the sweep's
    mark, and waits for it to checkpoint and end. The job itself takes SIGINT back when it starts
    training (`StopRequest`). `start_controller` is submitit's own function, wrapped in place:
    test_kill_resume.py's submitit_local Ctrl-C test fails if a submitit release bypasses it."""
    if not launcher_target.endswith("submitit_launcher.LocalLauncher"):
        return
    from submitit.local import local

    if getattr(local.start_controller, "deaf_to_sigint", False):
        return
    start_controller = local.start_controller

    def start_deaf_to_sigint(*args, **kwargs):
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            return start_controller(*args, **kwargs)
        finally:
            signal.signal(signal.SIGINT, previous)

    start_deaf_to_sigint.deaf_to_sigint = True
    local.start_controller = start_deaf_to_sigint


class StopSweepOnSignal(StopRequest):
    """In the launching process, from the sweep's start to its end (`SweepSummary`): the first
    SIGTERM/SIGINT marks the sweep stopped and the launcher goes on waiting for its jobs, which
    checkpoint and stop (on the same signal from a terminal or a scheduler, which signal the whole
    process group, or on seeing the mark); a later signal acts as before."""

    def __init__(self, sweep_dir: str | Path):
        super().__init__()
        self.sweep_dir = Path(sweep_dir)

    def on_first_signal(self) -> None:
        mark_stopped(self.sweep_dir, self.signal_name)
        print(f"cellmap_train: {self.signal_name}: no new job starts; running jobs checkpoint their step and stop "
              f"(again to stop at once)", flush=True)
