"""Kill -9 at a step, in validation and in the middle of a checkpoint write, then resume with
load_model=latest: the final weights equal an uninterrupted run's, bit for bit, and no file
under a checkpoint's final name is ever truncated. SIGTERM / Ctrl-C: the step in progress is
finished, checkpointed, and the run exits 1 with one line; resuming it is exact too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cellmap_train.engine.checkpoint import read_checkpoint
from cellmap_train.engine.pause_hook import ENV, MARKER
from faults import TINY, stop_line, wait_for_marker

pytestmark = pytest.mark.slow
EPOCHS = ["epochs=3", "data.dataloader_kwargs.num_workers=1"]


def finish(proc, timeout: float = 600) -> tuple[str, str]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-2000:]}\n{err[-3000:]}"
    return out, err


def final_weights(run: Path) -> dict:
    state = read_checkpoint(run / "checkpoints" / "2d_unet_3.pth")
    assert (state["epoch"], state["step"]) == (3, 9)
    return state["model"]


def assert_no_truncated_checkpoint(run: Path) -> None:
    for path in (run / "checkpoints").glob("*.pth"):
        read_checkpoint(path)  # raises CheckpointError on a truncated file


@pytest.fixture(scope="module")
def reference(tmp_path_factory, demo_cache):
    """The uninterrupted run's final weights."""
    folder = tmp_path_factory.mktemp("reference")
    env = {**os.environ, "CELLMAP_TRAIN_DEMO_DIR": str(demo_cache)}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([sys.executable, "-m", "cellmap_train", *TINY, *EPOCHS, "hydra.run.dir=run"], cwd=folder,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return final_weights(folder / "run")


def same_weights(left: dict, right: dict) -> bool:
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


@pytest.mark.parametrize("point", ["step@5", "validation@2", "checkpoint_write@2"])
def test_kill_9_then_resume_equals_uninterrupted(spawn, tmp_path, reference, point):
    proc = spawn(*EPOCHS, "hydra.run.dir=run", env={ENV: point})
    wait_for_marker(proc, MARKER)
    proc.kill()  # SIGKILL: no handler runs
    proc.communicate(timeout=60)
    run = tmp_path / "run"
    assert_no_truncated_checkpoint(run)
    if point.startswith("checkpoint_write"):
        assert not (run / "checkpoints" / "2d_unet_2.pth").exists()
        assert list((run / "checkpoints").glob(".2d_unet_2.pth.tmp-*")), "the kill did not hit the write window"
    finish(spawn(*EPOCHS, "hydra.run.dir=run", "load_model=latest"))
    assert same_weights(final_weights(run), reference)
    assert not list((run / "checkpoints").glob(".*.tmp-*")), "a stale temporary file was left behind"


@pytest.mark.parametrize("sig", [signal.SIGTERM])  # `kill PID`; SIGINT (a terminal's Ctrl-C) reaches the whole group: below
def test_signal_checkpoints_the_step_and_resume_is_exact(spawn, tmp_path, reference, sig):
    proc = spawn(*EPOCHS, "hydra.run.dir=run", env={ENV: "step@5:2"})  # pause 2 s inside step 5
    wait_for_marker(proc, MARKER)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1
    line = stop_line(stderr)
    assert f"stopped by {sig.name} at epoch 2, step 5" in line and "load_model=latest" in line
    state = read_checkpoint(tmp_path / "run" / "checkpoints" / "2d_unet_2.pth")
    assert (state["epoch"], state["step"], state["epoch_steps"]) == (1, 5, 2)
    finish(spawn(*EPOCHS, "hydra.run.dir=run", "load_model=latest"))
    assert same_weights(final_weights(tmp_path / "run"), reference)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_whole_group_reaches_the_workers_too_and_the_checkpoint_is_written(spawn, tmp_path, sig):
    # a terminal's Ctrl-C signals the whole process group; so do Slurm at its time limit and torchrun
    # when stopped, with SIGTERM. Here it comes while the main process still waits on validation
    # batches from spawned workers (which get no handler from it): they must go on.
    proc = spawn(*EPOCHS, "hydra.run.dir=run", "validation_batch_limit=12", "data.dataloader_kwargs.num_workers=1",
                 "data.dataloader_kwargs.prefetch_factor=1", "+data.dataloader_kwargs.multiprocessing_context=spawn",
                 env={ENV: "validation@1:2"}, new_session=True)
    wait_for_marker(proc, MARKER)
    os.killpg(proc.pid, sig)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1
    line = stop_line(stderr)
    assert f"stopped by {sig.name} at epoch 2, step 4: checkpoint" in line and "2d_unet_2.pth written" in line, line
    assert read_checkpoint(tmp_path / "run" / "checkpoints" / "2d_unet_1.pth")["epoch"] == 1
    state = read_checkpoint(tmp_path / "run" / "checkpoints" / "2d_unet_2.pth")
    assert (state["epoch"], state["step"], state["epoch_steps"]) == (1, 4, 1)


def test_ctrl_c_stops_a_sweep_the_jobs_left_are_skipped_and_it_continues_from_the_checkpoint(spawn, tmp_path):
    import pandas as pd

    sweep = ["hydra.mode=MULTIRUN", "seed=1,2,3", "epochs=3", "hydra.sweep.dir=sweep"]  # -m: only before TINY
    proc = spawn(*sweep, env={ENV: "step@5:2"}, new_session=True)  # the first job pauses 2 s in step 5 (epoch 2)
    wait_for_marker(proc, MARKER)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-3000:]
    table = pd.read_csv(tmp_path / "sweep" / "summary.csv").set_index("job").sort_index()
    assert table.status.tolist() == ["interrupted", "skipped", "skipped"]  # not one job per Ctrl-C
    assert table.error[0].startswith("stopped by SIGINT at epoch 2, step 5: checkpoint")
    assert table.error[1] == table.error[2] == "not run: SIGINT stopped the sweep"
    # the interrupted job's row keeps what its finished epoch measured, and names the step's checkpoint
    assert (table.epochs_done[0], table.steps[0], table.best_epoch[0]) == (1, 5, 1) and 0 < table.best_metric[0] <= 1
    assert table.checkpoint[0].endswith("2d_unet_2.pth")
    assert not (tmp_path / "sweep" / "1" / "checkpoints").exists()
    assert "continue it with hydra.sweep.dir=sweep load_model=latest" in out
    out, err = finish(spawn(*sweep, "load_model=latest"))
    assert "Resumed from" in err + out and "sweep/0/checkpoints/2d_unet_2.pth (epoch 1, step 5)" in err + out
    table = pd.read_csv(tmp_path / "sweep" / "summary.csv")
    assert (table.status == "ok").all() and (table.epochs_done == 3).all()


def test_ctrl_c_stops_a_parallel_sweep_its_running_jobs_checkpoint_and_the_queued_one_is_skipped(spawn, tmp_path):
    import pandas as pd

    proc = spawn("hydra.mode=MULTIRUN", "hydra/launcher=parallel", "seed=1,2,3", "epochs=2", "hydra.sweep.dir=sweep",
                 env={ENV: "step@2:3"}, new_session=True)  # each of the 2 workers pauses 3 s in its job's second step
    wait_for_marker(proc, MARKER)
    os.killpg(proc.pid, signal.SIGINT)  # the launching process and both workers, as a terminal does
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-3000:]
    table = pd.read_csv(tmp_path / "sweep" / "summary.csv").set_index("job").sort_index()
    assert table.status.tolist() == ["interrupted", "interrupted", "skipped"], table.error.tolist()
    for job in (0, 1):  # each wrote the step it was in; the launcher waited for them instead of killing them
        assert table.error[job].startswith("stopped by SIGINT at epoch 1, step ")
        assert read_checkpoint(tmp_path / "sweep" / str(job) / "checkpoints" / "2d_unet_1.pth")["epoch"] == 0
    assert "no new job starts" in out and "Traceback" not in err


def test_ctrl_c_in_a_submitit_local_sweep_lets_the_jobs_checkpoint(spawn, tmp_path):
    """submitit runs each job under a controller process that, on a terminal's Ctrl-C, used to die
    of KeyboardInterrupt and SIGKILL its job a second later: no checkpoint, the launcher failing on
    the missing result, no summary. The jobs here pause 4 s in a step, longer than that second."""
    import pandas as pd

    proc = spawn("hydra.mode=MULTIRUN", "hydra/launcher=submitit_local", "seed=1,2", "epochs=2",
                 "hydra.sweep.dir=sweep", env={ENV: "step@2:4"}, new_session=True)
    logs = tmp_path / "sweep" / ".submitit"
    deadline = time.monotonic() + 120
    while sum(MARKER in log.read_text() for log in logs.rglob("*_log.err")) < 2:  # both jobs in their second step
        assert time.monotonic() < deadline and proc.poll() is None, "the jobs never reached their second step"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # launcher, controllers and jobs, as a terminal does
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-3000:]
    table = pd.read_csv(tmp_path / "sweep" / "summary.csv").set_index("job").sort_index()
    assert table.status.tolist() == ["interrupted", "interrupted"], table.error.tolist()
    for job in (0, 1):
        assert table.error[job].startswith("stopped by SIGINT at epoch 1, step 2: checkpoint")
        assert read_checkpoint(tmp_path / "sweep" / str(job) / "checkpoints" / "2d_unet_1.pth")["step"] == 2
    assert "no new job starts" in out and "Traceback" not in err


def test_sigterm_to_the_launching_process_alone_stops_the_parallel_jobs_at_their_next_step(spawn, tmp_path):
    """`kill <pid>` of the sweep (not its process group): the workers never get the signal, they
    see the sweep marked stopped and checkpoint the step they are in."""
    import pandas as pd

    proc = spawn("hydra.mode=MULTIRUN", "hydra/launcher=parallel", "seed=1,2,3", "epochs=2", "hydra.sweep.dir=sweep",
                 env={ENV: "step@2:4"}, new_session=True)  # each of the 2 workers pauses 4 s in its job's second step
    wait_for_marker(proc, MARKER)
    wait_for_marker(proc, MARKER)  # both jobs are in their second step
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-3000:]
    table = pd.read_csv(tmp_path / "sweep" / "summary.csv").set_index("job").sort_index()
    assert table.status.tolist() == ["interrupted", "interrupted", "skipped"], table.error.tolist()
    for job in (0, 1):  # without watching the mark they would have run their 6 steps
        assert table.error[job].startswith("stopped by SIGTERM at epoch 1, step 2: checkpoint")
        assert read_checkpoint(tmp_path / "sweep" / str(job) / "checkpoints" / "2d_unet_1.pth")["step"] == 2
    assert "no new job starts" in out and "Traceback" not in err


def rank_process(parent: int, rank: int) -> int:
    """The pid of torchrun's child with RANK=rank (read from /proc)."""
    for entry in Path("/proc").iterdir():
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0") if ppid == parent else []
        except (OSError, ValueError, IndexError):
            continue
        if f"RANK={rank}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no process with RANK={rank} under {parent}")


DDP_RUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cellmap_train",
           "experiment=demo", "trainer=smoke", "trainer.epochs=2", "trainer.iterations_per_epoch=6",
           "model.base_features=4", "model.depth=2", "batch_size=2", "trainer.num_threads=1", "hydra.run.dir=run"]


def torchrun(cwd: Path, demo_cache: Path, *args: str, pause: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "CELLMAP_TRAIN_DEMO_DIR": str(demo_cache), "PYTHONUNBUFFERED": "1"}
    if pause:
        env[ENV] = pause
    return subprocess.Popen([*DDP_RUN, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def finish_group(proc: subprocess.Popen, timeout: float = 120) -> tuple[str, str]:
    """Its output once it ends; a run that outlives `timeout` is killed with every process it started."""
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def ddp_digest(stdout: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith("DDP: weights identical")).rsplit("sha256 ", 1)[1]


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory, demo_cache) -> str:
    """The weights digest of the DDP run, never interrupted."""
    proc = torchrun(tmp_path_factory.mktemp("ddp_reference"), demo_cache)
    out, err = finish_group(proc)
    assert proc.returncode == 0, err[-3000:]
    return ddp_digest(out)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds a rank's process through /proc")
@pytest.mark.parametrize("target", ["one_rank", "torchrun"])
def test_a_signal_to_torchrun_or_one_rank_stops_every_rank_at_the_same_step_and_resume_is_exact(
        demo_cache, tmp_path, ddp_reference, target):
    """SIGTERM to torchrun (it passes it to each rank's process group, loader workers included) or
    to one rank only. Before, the first killed the loader workers, so no checkpoint was written;
    with the second the signalled rank left and rank 0 waited in the next all-reduce for good."""
    proc = torchrun(tmp_path, demo_cache, pause="step@3:4")
    try:
        wait_for_marker(proc, MARKER)
        time.sleep(1)  # both ranks pause 4 s in step 3
        os.kill(proc.pid if target == "torchrun" else rank_process(proc.pid, rank=1), signal.SIGTERM)
    finally:
        out, err = finish_group(proc)  # it takes seconds; before the fixes it never ended or wrote nothing
    assert proc.returncode != 0
    assert "stopped by SIGTERM at epoch 1, step 3" in err  # rank 1 (both, from torchrun)
    rank0 = "SIGTERM" if target == "torchrun" else "a signal to another rank"
    assert f"stopped by {rank0} at epoch 1, step 3: checkpoint" in err  # rank 0, which wrote it
    assert read_checkpoint(tmp_path / "run" / "checkpoints" / "2d_unet_1.pth")["step"] == 3
    resumed = torchrun(tmp_path, demo_cache, "load_model=latest")
    out, err = finish_group(resumed)
    assert resumed.returncode == 0, err[-3000:]
    assert "Resumed from" in out and ddp_digest(out) == ddp_reference  # the same weights as never stopped
