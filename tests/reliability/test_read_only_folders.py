"""Folders a run cannot write: found before training (not after an epoch), each in one line that
names the folder, nothing earlier lost. Read-only is a real read-only file system (a tmpfs
remounted `ro`; the tests run as root, which ignores file modes, and are skipped where no tmpfs
can be mounted)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from faults import TINY, error_line

pytestmark = pytest.mark.slow
ONE_EPOCH = [*TINY, "epochs=1", "data.dataloader_kwargs.num_workers=0", "hydra.run.dir=run"]


@pytest.fixture
def read_only(tmp_path):
    """`mount(folder)`: a tmpfs at `folder` (its files copied in), `freeze(folder)`: remount it ro."""
    mounted = []

    def mount(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        kept = subprocess.run(["tar", "-C", str(folder), "-cf", "-", "."], capture_output=True, check=True).stdout
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)], capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(folder)
        subprocess.run(["tar", "-C", str(folder), "-xf", "-"], input=kept, check=True)
        return folder

    def freeze(folder: Path) -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)

    yield mount, freeze
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.parametrize("folder, what", [("checkpoints", "checkpoints"), ("tensorboard", "TensorBoard events")])
def test_a_read_only_output_folder_stops_the_run_before_training(run_main, tmp_path, read_only, folder, what):
    mount, freeze = read_only
    target = mount(tmp_path / "run" / folder)
    freeze(target)
    proc = run_main(*ONE_EPOCH)
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = error_line(proc.stderr)
    assert line.startswith(f"cellmap_train: error: {target}") and f"cannot write {what} there: read-only file system" in line
    assert "Epoch" not in proc.stdout and "epoch 1" not in proc.stdout.lower()  # no training first
    assert json.loads((tmp_path / "run" / "result.json").read_text())["status"] == "failed"


def test_resuming_in_a_read_only_run_folder_is_one_line_and_loses_nothing(run_main, tmp_path, read_only):
    mount, freeze = read_only
    run = mount(tmp_path / "run")
    assert run_main(*ONE_EPOCH).returncode == 0
    before = {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    freeze(run)
    proc = run_main(*[o for o in ONE_EPOCH if o != "epochs=1"], "epochs=2", "load_model=latest")
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = error_line(proc.stderr)
    assert str(run) in line and "read-only file system" in line, line
    assert len([x for x in proc.stderr.splitlines() if x.strip()]) == 1, proc.stderr[-3000:]
    assert {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
