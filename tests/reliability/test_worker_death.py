"""A DataLoader worker killed mid-epoch (`kill -9`, what the OOM killer does): the run ends in one
line that says what died and what to do, writes its record, and keeps the checkpoints it wrote
(before: two chained tracebacks, 89 lines, and no result.json)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from cellmap_train.engine.pause_hook import ENV, MARKER
from faults import error_line, wait_for_marker

pytestmark = pytest.mark.slow


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def test_a_killed_loader_worker_ends_the_run_in_one_line_with_its_record(spawn, tmp_path):
    proc = spawn("epochs=3", "data.dataloader_kwargs.num_workers=1", "hydra.run.dir=run",
                 env={ENV: "step@5:3"})  # pause inside step 5 (epoch 2), the worker alive beside it
    wait_for_marker(proc, MARKER)
    workers = children(proc.pid)
    assert workers, "no DataLoader worker to kill"
    for worker in workers:
        os.kill(worker, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr[-3000:]
    line = error_line(stderr)
    assert "DataLoader worker (pid" in line and "a data-loading worker died" in line, line
    assert "load_model=latest" in line and len(stderr.strip().splitlines()) <= 3, stderr[-3000:]
    record = json.loads((tmp_path / "run" / "result.json").read_text())
    assert record["status"] == "failed" and record["error"] == line.removeprefix("cellmap_train: error: ")
    assert (tmp_path / "run" / "checkpoints" / "2d_unet_1.pth").is_file()  # epoch 1's, kept
