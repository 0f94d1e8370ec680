"""Faults that lose or mix work: two runs in one folder, and writes that fail (a full disk) at a
checkpoint or a TensorBoard event file. The full disk is a real one: a small tmpfs (the tests
run as root where they can mount one, else they are skipped)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cellmap_train.engine.checkpoint import read_checkpoint
from cellmap_train.engine.pause_hook import MARKER
from cellmap_train.run.lock import LOCK_FILE, RunFolderBusy, hold, release
from faults import TINY, error_line, wait_for_marker

ONE_EPOCH = ["epochs=1", "data.dataloader_kwargs.num_workers=0", "hydra.run.dir=run"]


def stamped(folder: Path) -> dict[str, tuple[int, int]]:
    """{file: (size, mtime_ns)}: a file rewritten with the same bytes still shows."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_a_second_run_in_the_folder_stops_before_touching_it_and_kill_9_frees_it(spawn, run_main, tmp_path):
    first = spawn(*ONE_EPOCH, env={"CELLMAP_TRAIN_TEST_PAUSE_AT": "step"}, new_session=True)  # its own pid, not a fork server's
    try:
        wait_for_marker(first, MARKER)
        before = stamped(tmp_path / "run")
        assert ".hydra/config.yaml" in before and LOCK_FILE in before
        second = run_main(*TINY, *ONE_EPOCH, "lr=2e-4")  # another config: its .hydra/ would differ
        assert second.returncode == 1, second.stderr[-3000:]
        line = error_line(second.stderr)
        assert f"{(tmp_path / 'run').resolve()}: another run is using this folder (pid {first.pid} on " \
               f"{socket.gethostname()}, started " in line and "give this one its own hydra.run.dir" in line
        after = stamped(tmp_path / "run")
        # the first run's own writers (its train.log tee, its event writer's thread) may add bytes
        # meanwhile: those files are compared by name and content, everything else by stamp
        own = {name for name in before if name == "train.log" or name.startswith("tensorboard/")}
        assert after.keys() == before.keys(), "the second run added or removed files in the first one's folder"
        assert {k: v for k, v in after.items() if k not in own} == {k: v for k, v in before.items() if k not in own}, \
            "the second run touched the first one's folder"
        assert "another run is using this folder" not in (tmp_path / "run" / "train.log").read_text()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    third = run_main(*TINY, *ONE_EPOCH)  # the kernel let the lock go with the killed process
    assert third.returncode == 0, third.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "2d_unet_1.pth").is_file()


HOLDER = """
import sys
from cellmap_train.run.lock import hold
hold(sys.argv[1])
print("held", flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


def test_ranks_of_one_run_share_its_folder_and_a_sweeps_jobs_each_hold_their_own(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    other = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", "1")
        hold(folder)  # a DDP rank other than 0 of the run holding it: not a collision
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(RunFolderBusy, match=f"another run is using this folder \\(pid {other.pid} on "):
            hold(folder)
    finally:
        other.stdin.close()
        other.wait(timeout=60)
    hold(folder)  # the holder ended: free
    for job in ("0", "1"):  # a sweep's folder and its jobs' folders inside it, in one process
        hold(tmp_path / "sweep")
        hold(tmp_path / "sweep" / job)
    release()


@pytest.fixture
def small_disk(tmp_path):
    """`mount(name, size)`: a tmpfs of `size` at tmp_path/name, unmounted afterwards."""
    mounted = []

    def mount(name: str, size: str) -> Path:
        point = tmp_path / name
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_a_full_disk_at_a_checkpoint_write_is_one_line_keeping_the_earlier_checkpoint(run_main, tmp_path, small_disk):
    # one checkpoint of this model is ~455 KB: the first fits in 700 KB, the second (beside it) does not
    disk = small_disk("disk", "700k")
    proc = run_main(*TINY, "epochs=3", "data.dataloader_kwargs.num_workers=0", "hydra.run.dir=run",
                   f"model_save_path='{disk}/{{model_name}}_{{epoch}}.pth'")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert error_line(proc.stderr) == (f"cellmap_train: error: {disk}/2d_unet_2.pth: cannot write: no space left on "
                                       f"device; checkpoints of earlier epochs are kept")
    assert sorted(os.listdir(disk)) == ["2d_unet_1.pth"]  # no temporary file left
    assert read_checkpoint(disk / "2d_unet_1.pth")["epoch"] == 1
    assert '"status": "failed"' in (tmp_path / "run" / "result.json").read_text()


def test_a_full_disk_under_the_tensorboard_events_is_one_line(run_main, tmp_path, small_disk):
    disk = small_disk("events", "64k")  # an epoch's sample images alone take ~220 KB
    proc = run_main(*TINY, "epochs=1", "data.dataloader_kwargs.num_workers=0", "hydra.run.dir=run",
                   f"logs_save_path='{disk}/{{model_name}}'")
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = error_line(proc.stderr)
    assert line.startswith(f"cellmap_train: error: {disk}/2d_unet/events.out.tfevents.") and \
        line.endswith(": cannot write: no space left on device"), line


def test_a_full_disk_at_the_datasplit_or_the_record_names_the_file_and_leaves_no_temp_file(small_disk):
    from cellmap_train.data.datasplit import CropEntry, write_datasplit
    from cellmap_train.files import RunWriteError
    from cellmap_train.run.record import write_record

    disk = small_disk("full", "8k")
    (disk / "filler").write_bytes(b"x" * 8192)  # the whole disk: the next write has no room
    entry = CropEntry("train", "/a.zarr", "recon-1/em/fibsem-uint8", "/a.zarr", "recon-1/labels/groundtruth/crop1", ("nuc",))
    with pytest.raises(RunWriteError, match=f"^{disk}/datasplit.csv: cannot write: no space left on device$"):
        write_datasplit([entry] * 200, disk / "datasplit.csv")
    with pytest.raises(RunWriteError, match=f"^{disk}/result.json: cannot write: no space left on device$"):
        write_record(disk, {"status": "ok", "notes": "x" * 20000})
    assert sorted(os.listdir(disk)) == ["filler"]


def test_a_full_disk_at_the_hydra_config_write_is_one_line(run_main, tmp_path, small_disk):
    disk = small_disk("disk", "64k")
    (disk / "filler").write_bytes(b"x" * 56 * 1024)  # room for the run lock's page, not for .hydra/'s files
    proc = run_main(*TINY, "epochs=1", f"hydra.run.dir={disk}/run")
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = error_line(proc.stderr)
    assert f"{disk}/run/.hydra/" in line and "no space left on device" in line.lower(), line
    assert not list((disk / "run").rglob("*.tmp-*")) and not (disk / "run" / "checkpoints").exists()
