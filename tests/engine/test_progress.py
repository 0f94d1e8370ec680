"""Progress off a terminal: a plain line every N steps, and at the first step after
`every_seconds` without one (a clock given to it, so the test does not wait 30 s)."""

from __future__ import annotations

import re

from cellmap_train.engine.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def steps_printed(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"step (\d+)/\d+:", text)]


def test_a_line_every_n_steps_and_after_30_seconds_without_one(capsys):
    clock = Clock()
    progress = Progress(total_steps=200, done_steps=0, every=50, every_seconds=30, clock=clock)
    assert not progress.interactive  # pytest's captured stderr is not a terminal
    progress.set_epoch(1, 2)
    for step in range(1, 121):
        clock.now += 0.5 if step <= 50 else 10.0  # slow steps after step 50
        progress.update(loss=0.5, smoothed=0.6)
    # every 50 steps, and every third slow step (30 s since the last line)
    assert steps_printed(capsys.readouterr().out) == [50, *range(53, 100, 3), 100, *range(103, 121, 3)]


def test_the_last_step_is_always_printed_and_seconds_can_be_off(capsys):
    clock = Clock()
    progress = Progress(total_steps=7, done_steps=2, every=50, every_seconds=None, clock=clock)
    for _ in range(5):
        clock.now += 100.0
        progress.update(loss=0.5, smoothed=0.6)
    out = capsys.readouterr().out
    assert steps_printed(out) == [7]
    assert "ETA 00:00" in out and "0.01 it/s" in out  # 5 steps in 500 s of the given clock


def test_a_resumed_run_counts_its_rate_from_where_it_started(capsys):
    clock = Clock()
    progress = Progress(total_steps=100, done_steps=40, every=10, every_seconds=30, clock=clock)
    for _ in range(10):
        clock.now += 1.0
        progress.update(loss=0.5, smoothed=0.6)
    line = capsys.readouterr().out.strip()
    assert steps_printed(line) == [50] and "1.00 it/s, ETA 00:50" in line
