"""A test hook, off unless the environment asks for it: CELLMAP_TRAIN_TEST_PAUSE_AT=<point>[@<n>]
makes the process print a marker to stderr and sleep the n-th time (default 1st) it reaches
<point>, so a test can kill it exactly there (tests/reliability/test_kill_resume.py);
`<point>@<n>:<seconds>` sleeps that long and then goes on (to signal it at a known place).
Points: `step` (after backward, before the optimizer step), `validation` (after a validation
batch), `checkpoint_write` (temporary file written, not yet renamed to its final name)."""

from __future__ import annotations

import os
import sys
import time

ENV = "CELLMAP_TRAIN_TEST_PAUSE_AT"
MARKER = "cellmap_train test hook: paused at"
_reached: dict[str, int] = {}


def pause_point(point: str) -> None:
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    wanted, _, seconds = wanted.partition(":")
    name, _, count = wanted.partition("@")
    if name != point:
        return
    _reached[point] = _reached.get(point, 0) + 1
    if _reached[point] == int(count or 1):
        print(f"{MARKER} {point}@{_reached[point]} (pid {os.getpid()})", file=sys.stderr, flush=True)
        deadline = time.monotonic() + float(seconds or "inf")
        while time.monotonic() < deadline:  # until killed, or the given seconds are over
            time.sleep(min(0.1, deadline - time.monotonic()) if seconds else 60)
