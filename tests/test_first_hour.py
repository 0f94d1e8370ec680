"""What a new user meets in the first hour (issue 37): a run on the demo data by default says so
and how to point it at real data; off a terminal a progress line comes at least every
`trainer.log_every_n_seconds`; `<run folder>/train.log` holds what the run printed (on a terminal:
the plain progress lines, not the bar)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import pytest


NOTICE = "Data: the built-in synthetic demo (data=demo, the default)"
# the default config (no experiment), made tiny; data left at its default
TINY_DEFAULT = ["epochs=1", "iterations_per_epoch=3", "batch_size=2", "input_array_info.shape=[1,48,48]",
                "model.base_features=4", "validation_batch_limit=1", "data.dataloader_kwargs.num_workers=0",
                "load_model=null"]


def test_a_run_on_the_default_data_says_so_once_and_train_log_holds_all_it_printed(run_cli, tmp_path):
    """Off a terminal: the notice once, a progress line per step (every_seconds=0: the 30 s rule
    without waiting 30 s), and train.log holding stdout and stderr as the run printed them."""
    proc = run_cli(*TINY_DEFAULT, "hydra.run.dir=run", "trainer.log_every_n_steps=1000",
                   "trainer.log_every_n_seconds=0", check=True)
    assert proc.stdout.count(NOTICE) == 1, proc.stdout
    notice = next(line for line in proc.stdout.splitlines() if line.startswith(NOTICE))
    assert "data=cellmap paths.data_dir=" in notice and "data=cellmap_s3" in notice
    assert [int(n) for n in re.findall(r"step (\d+)/3:", proc.stdout)] == [1, 2, 3]
    log = (tmp_path / "run" / "train.log").read_text()
    for line in (proc.stdout + proc.stderr).splitlines():
        assert line in log, f"{line!r} is not in train.log:\n{log}"
    assert "Validation Dice" in log and "Checkpoint:" in log and "\r" not in log
    tags = scalar_tags(tmp_path / "run" / "tensorboard" / "2d_unet")
    assert "dice/mean" in tags and not [tag for tag in tags if tag.startswith("hparam/")]


def scalar_tags(log_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for events in log_dir.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    return tags


def test_the_one_line_error_lands_in_train_log_too_and_comes_alone(run_cli, tmp_path):
    """A config error: the one line, in train.log too, without the demo notice before it."""
    proc = run_cli(*TINY_DEFAULT, "hydra.run.dir=run", "optimizer.weight_decay=-1")
    assert proc.returncode == 1
    error = next(line for line in proc.stderr.splitlines() if line.startswith("cellmap_train: error:"))
    assert error in (tmp_path / "run" / "train.log").read_text()
    assert NOTICE not in proc.stdout


def test_on_a_terminal_the_bar_stays_there_and_the_log_gets_plain_progress_lines(demo_cache, tmp_path):
    """stdout and stderr on a pseudo-terminal: tqdm draws its bar there (carriage returns); the
    log gets the plain lines every N steps instead, and the notes and closing lines as printed."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a new pty is 0 columns wide
    env = {**os.environ, "CELLMAP_TRAIN_DEMO_DIR": str(demo_cache), "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen([sys.executable, "-m", "cellmap_train", *TINY_DEFAULT, "data=demo", "hydra.run.dir=run",
                                    "trainer.log_every_n_steps=1"],
                            cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower)
    os.close(follower)
    screen = bytearray()
    reader = threading.Thread(target=_read_all, args=(leader, screen), daemon=True)
    reader.start()
    assert proc.wait(timeout=600) == 0, screen.decode(errors="replace")[-3000:]
    reader.join(timeout=30)
    terminal = screen.decode(errors="replace")
    assert "\r" in terminal and "it/s" in terminal  # the bar
    assert NOTICE not in terminal  # data=demo chosen on the command line
    log = (tmp_path / "run" / "train.log").read_text()
    assert "\r" not in log and "it/s]" not in log  # no bar in the log
    assert [int(n) for n in re.findall(r"step (\d+)/3:", log)] == [1, 2, 3]
    assert "epoch 1/1: loss/train" in log and "Validation Dice" in log


def _read_all(fd: int, into: bytearray) -> None:
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: every writer closed the terminal
            break
        if not chunk:
            break
        into += chunk
    os.close(fd)


@pytest.mark.parametrize("overrides, said", [
    ([], True),
    (["model=2d_resnet"], True),
    (["use_s3=true"], True),  # data=demo still: exactly the user who needs the line
    (["data=demo"], False),
    (["experiment=demo"], False),
    (["data=cellmap"], False),
    (["data=cellmap_s3"], False),
])
def test_the_demo_notice_only_when_data_is_left_at_its_default(compose_cfg, overrides, said):
    from cellmap_train.config.demo_notice import demo_notice

    notice = demo_notice(compose_cfg(*overrides).hydra)
    assert (notice is not None and notice.startswith(NOTICE)) is said


def test_a_sweep_says_it_in_its_first_job_only(compose_cfg):
    from hydra.types import RunMode

    from cellmap_train.config.demo_notice import demo_notice

    cfg = compose_cfg()
    assert demo_notice(set_hydra(cfg, mode=RunMode.MULTIRUN, **{"job.num": 0}).hydra)
    assert demo_notice(set_hydra(cfg, **{"job.num": 1}).hydra) is None


def set_hydra(cfg, **values):
    """`cfg` with hydra.<key> set (the composed hydra node and its parts are read-only)."""
    from omegaconf import OmegaConf

    for key, value in values.items():
        node = cfg.hydra
        for part in ["", *key.split(".")[:-1]]:
            node = node[part] if part else node
            OmegaConf.set_readonly(node, False)
            OmegaConf.set_struct(node, False)
        node[key.split(".")[-1]] = value
    return cfg


def test_run_log_writes_on_rank_zero_only_and_lets_the_streams_go_at_the_job_end(compose_cfg, tmp_path,
                                                                               monkeypatch, capsys):
    from cellmap_train.run.log import RunLog

    cfg = set_hydra(compose_cfg(), **{"runtime.output_dir": str(tmp_path), "job.name": "train"})
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    streams = sys.stdout, sys.stderr
    callback = RunLog()
    callback.on_job_start(config=cfg)
    print("from rank 1")
    callback.on_job_end(config=cfg)
    assert not (tmp_path / "train.log").exists() and (sys.stdout, sys.stderr) == streams
    monkeypatch.setenv("RANK", "0")
    callback.on_job_start(config=cfg)
    print("to stdout")
    print("to stderr", file=sys.stderr)
    callback.on_job_end(config=cfg)
    assert (sys.stdout, sys.stderr) == streams
    print("after the job")
    assert (tmp_path / "train.log").read_text().splitlines() == ["to stdout", "to stderr"]
    captured = capsys.readouterr()
    assert "to stdout" in captured.out and "to stderr" in captured.err and "after the job" in captured.out


def test_a_log_that_cannot_be_written_leaves_the_run_to_report_it(compose_cfg, tmp_path):
    """A run folder where train.log cannot be opened (here: a folder in its place): no log, no error
    from the callback; the run's own writes stop it in one line naming the file."""
    from cellmap_train.run.log import RunLog

    (tmp_path / "train.log").mkdir()
    cfg = set_hydra(compose_cfg(), **{"runtime.output_dir": str(tmp_path), "job.name": "train"})
    streams = sys.stdout, sys.stderr
    callback = RunLog()
    callback.on_job_start(config=cfg)
    assert (sys.stdout, sys.stderr) == streams
    callback.on_job_end(config=cfg)


def test_each_job_of_a_sweep_logs_into_its_own_folder(run_cli, tmp_path):
    run_cli("-m", *TINY_DEFAULT, "iterations_per_epoch=2", "seed=1,2", "hydra.sweep.dir=sweep", check=True)
    logs = [(tmp_path / "sweep" / job / "train.log").read_text() for job in ("0", "1")]
    for job, log in enumerate(logs):
        assert f"Checkpoint: {tmp_path / 'sweep' / str(job)}/checkpoints/" in log, log
        assert f"sweep/{1 - job}/" not in log
    assert [log.count(NOTICE) for log in logs] == [1, 0]  # the sweep says it once


def test_a_run_folder_on_a_read_only_file_system_is_one_line(run_cli, tmp_path):
    """Resuming in a folder on a read-only file system: one line naming the folder, exit 1 (Hydra's
    file handler for train.log used to end it in logging's 30-line traceback)."""
    mount = tmp_path / "ro"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        (mount / "run").mkdir()
        (mount / "run" / "train.log").write_text("the first run's output\n")
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        proc = run_cli(*TINY_DEFAULT, f"hydra.run.dir={mount / 'run'}", "load_model=latest")
        assert proc.returncode == 1
        assert "Traceback" not in proc.stderr and "Unable to configure" not in proc.stderr, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.startswith("cellmap_train: error:")]
        assert len(lines) == 1 and str(mount / "run") in lines[0] and "read-only file system" in lines[0], proc.stderr
        assert (mount / "run" / "train.log").read_text() == "the first run's output\n"
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)
