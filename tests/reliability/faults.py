"""Helpers shared by the reliability tests (a module with its own name: pytest puts every
test folder on sys.path, and several folders have a conftest.py)."""

from __future__ import annotations

import hashlib
import os
import selectors
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TINY = ["experiment=demo", "iterations_per_epoch=3", "batch_size=4", "validation_batch_limit=2",
        "trainer.deterministic=true", "model.base_features=4", "trainer.log_every_n_steps=1"]


RUN = [*TINY, "epochs=1", "data.dataloader_kwargs.num_workers=0", "hydra.run.dir=run"]  # a short run in ./run


def fails_with(run_inprocess, tmp_path: Path, *args: str) -> str:
    """A short in-process run in tmp_path/run that must exit 1 leaving the folder as it was: its
    one error line."""
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    before = snapshot(run)
    code, output = run_inprocess(*RUN, *args)
    assert code == 1, output[-3000:]
    assert_untouched(before, run)
    return error_line(output)


def error_line(stderr: str, start: str = "cellmap_train: error:") -> str:
    """The one `cellmap_train: error:` line; fails if there is a traceback or more than one."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith(start)]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def stop_line(stderr: str) -> str:
    """The one `cellmap_train: stopped by SIG...` line of a run a signal stopped (a stop, not an error)."""
    assert "cellmap_train: error:" not in stderr, stderr[-3000:]
    return error_line(stderr, start="cellmap_train: stopped by ")


def snapshot(folder: Path) -> dict[str, str]:
    """{relative path: sha1} of every file under `folder`."""
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_untouched(before: dict[str, str], folder: Path) -> None:
    after = snapshot(folder)
    changed = [name for name, digest in before.items() if after.get(name) != digest]
    assert not changed, f"existing files changed or removed: {changed}"


def wait_for_marker(proc: subprocess.Popen, marker: str, timeout: float = 300) -> list[str]:
    """Read stderr lines until one contains `marker`; returns the lines read. Reads the pipe's
    bytes itself and keeps what follows the marker's line for the next call: a buffered
    readline() could hold a second marker that arrived with the first, while select() waits on
    an empty pipe (two sweep jobs pausing at once)."""
    pending: bytearray = proc.__dict__.setdefault("_marker_pending", bytearray())
    lines, deadline = [], time.monotonic() + timeout
    selector = selectors.DefaultSelector()
    selector.register(proc.stderr, selectors.EVENT_READ)
    while time.monotonic() < deadline:
        while b"\n" in pending:
            end = pending.index(b"\n") + 1
            line = pending[:end].decode(errors="replace")
            del pending[:end]
            lines.append(line)
            if marker in line:
                return lines
        if selector.select(timeout=1):
            chunk = os.read(proc.stderr.fileno(), 65536)
            if not chunk:
                break
            pending += chunk
    proc.kill()
    raise AssertionError(f"never saw {marker!r}; stderr:\n{''.join(lines)[-3000:]}\nstdout:\n{proc.stdout.read()[-2000:]}")
