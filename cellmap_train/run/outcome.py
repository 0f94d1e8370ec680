"""One job as the user sees it: the run's record (`result.json`), its one-line error and the
lines it ends with, and what a signal or a failure does to a --multirun.

`train.py` builds and trains; this module decides what a failing or stopped run leaves behind:
in a sweep a failing job is recorded and the others go on, on its own a user error exits 1 with
one line."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from hydra.errors import InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cellmap_train.run import sweep_split, sweep_stop
from cellmap_train.config.location import run_path
from cellmap_train.errors import ConfigError, TrainingInterrupted, UserError, first_line
from cellmap_train.files import RunWriteError
from cellmap_train.host.stop_request import StopRequest
from cellmap_train.run.record import RunRecord, relative_to_run
from cellmap_train.host.torchrun import is_rank_zero

if TYPE_CHECKING:  # torch loads when a run starts (see train.py)
    from cellmap_train.engine import FitResult

Train = Callable[[DictConfig, "StopRequest | None"], "FitResult"]


def run_job(cfg: DictConfig, hydra_cfg: DictConfig, train: Train) -> float:
    """The job Hydra runs: the run and its record. A sweep's job in its own process ignores
    signals once it is done (its launcher is stopping the sweep)."""
    try:
        return run_and_record(cfg, hydra_cfg, train)
    finally:
        if hydra_cfg.mode == RunMode.MULTIRUN and not sweep_stop.runs_jobs_in_this_process(hydra_cfg.launcher._target_):
            sweep_stop.ignore_signals_between_jobs()


def run_and_record(cfg: DictConfig, hydra_cfg: DictConfig, train: Train) -> float:
    """One run. In a --multirun a failing job is recorded and the sweep goes on (a signal stops
    it: the jobs left are skipped); otherwise a user error exits 1 with one line (a traceback
    only with HYDRA_FULL_ERROR=1)."""
    start = time.perf_counter()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    writes_files = is_rank_zero()  # only rank 0 under torchrun
    output_dir = OmegaConf.select(cfg, "paths.output_dir", default=hydra_cfg.runtime.output_dir)
    stopped_by = sweep_stop.stopped_by(hydra_cfg.sweep.dir) if multirun else None
    if stopped_by:
        message = f"not run: {stopped_by} stopped the sweep"
        print(f"cellmap_train: {message}", file=sys.stderr)
        if writes_files:
            record(None, cfg, 0.0, error=message, status="skipped").write(output_dir)
        return math.nan
    stop = None
    try:
        if multirun:  # a sweep's job takes signals from its start: one during set-up stops it at its first step
            with sweep_stop.job_stop_request(hydra_cfg.launcher._target_, hydra_cfg.sweep.dir) as stop:
                result = train(cfg, stop)
        else:
            result = train(cfg)
    except Exception as err:
        known = known_failure(err)  # None: a bug, whose traceback is shown (after its record is written)
        if loader_worker_died(err):  # torch's SIGCHLD handler would raise again as the dead loader is collected
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
        message = known or f"{type(err).__name__}: {err}".splitlines()[0]
        stopped = isinstance(err, TrainingInterrupted)  # its record keeps the metrics of the epochs it finished
        if (known and not full_error) or multirun:
            # a signal the user (or Slurm) sent is a stop asked for, not an error: said as such
            print(f"cellmap_train: {message}" if stopped else f"cellmap_train: error: {message}", file=sys.stderr)
        # a record that cannot be written either (the full disk that stopped the run): the line above says why
        with contextlib.suppress(RunWriteError):
            if writes_files:
                ended = record(err.result if stopped else None, cfg, time.perf_counter() - start, error=message,
                               status="interrupted" if stopped else None)
                ended.config_error = is_config_error(err)
                ended.write(output_dir)
        if multirun:
            stop_sweep_if_signalled(stop, hydra_cfg)
            return math.nan
        if full_error or not known:
            raise
        sys.exit(1)
    if multirun:
        stop_sweep_if_signalled(stop, hydra_cfg)  # the signal came after the last step: the job is done
    if writes_files:
        record(result, cfg, time.perf_counter() - start).write(output_dir)
        report(result, cfg)
    return result.best_metric


def known_failure(err: BaseException) -> str | None:
    """The one line for a failure the user can act on; None for one that is a bug of ours."""
    if isinstance(err, (UserError, InstantiationException, OmegaConfBaseException)):
        return one_line(err)
    if loader_worker_died(err):
        return (f"{first_line(err).rstrip('. ')}: a data-loading worker died (out of memory? "
                f"`dmesg` says); lower data.dataloader_kwargs.num_workers or batch_size; the checkpoints written "
                f"so far are kept, continue with load_model=latest")
    return None


def loader_worker_died(err: BaseException) -> bool:
    """torch's error for a DataLoader worker that was killed (the OOM killer, kill -9) or exited."""
    return isinstance(err, RuntimeError) and str(err).strip().startswith("DataLoader worker (pid")


def is_config_error(err: BaseException) -> bool:
    """A run stopped by its configuration (a bad override, a group that does not compose or
    instantiate) before training: `cellmap-train runs` lists it only with --all."""
    cause = err.__cause__ if isinstance(err, InstantiationException) else err
    return isinstance(err, OmegaConfBaseException) or isinstance(cause, (ConfigError, OmegaConfBaseException))


def stop_sweep_if_signalled(stop: StopRequest | None, hydra_cfg: DictConfig) -> None:
    if stop is not None and stop.requested and sweep_stop.stops_the_sweep(hydra_cfg.launcher._target_):
        sweep_stop.mark_stopped(hydra_cfg.sweep.dir, stop.signal_name)


def report(result: FitResult, cfg: DictConfig) -> None:
    final = result.final_metrics.get("dice/mean", float("nan"))
    # a run that had nothing left to train has no first epoch of its own: its checkpoint's metrics
    first_epoch = result.first_epoch or 1  # the run's first across its processes (older checkpoints: this one's)
    first = f"epoch {first_epoch} {result.first_metrics['dice/mean']:.3f} -> " if "dice/mean" in result.first_metrics else ""
    print(f"Validation Dice (mean over {list(cfg.classes)}): {first}final {final:.3f}; "
          f"best {cfg.trainer.best_metric} {result.best_metric:.3f} at epoch {result.best_epoch}")
    print(f"Checkpoint: {result.checkpoint}")
    print(f"TensorBoard: tensorboard --logdir {run_path(cfg, cfg.logs_save_path)}")
    print(f"Predict: cellmap-train predict input={cfg.paths.output_dir}   # its validation crops; then evaluate / pack")


def one_line(err: BaseException) -> str:
    """InstantiationException wraps the constructor's error: show the group and the cause."""
    if isinstance(err, InstantiationException):
        cause = err.__cause__ or err
        message = first_line(cause, type(cause).__name__)
        key = next((line.split(":", 1)[1].strip() for line in str(err).splitlines() if line.startswith("full_key:")), "")
        prefix = f"{key}: " if key else ""
        return prefix + (message if isinstance(cause, UserError) else f"{type(cause).__name__}: {message}")
    return first_line(err)


def record(result: FitResult | None, cfg: DictConfig, seconds: float, error: str | None = None,
           status: str | None = None) -> RunRecord:
    """What result.json (and a sweep's summary.csv) says about this run: status ok, failed,
    interrupted (a signal stopped it after a checkpoint) or skipped (a signal stopped the sweep).
    `seconds`: this process's share; a resumed run adds the time of the processes before it."""
    final = result.final_metrics if result else {}
    best_metric_name = OmegaConf.select(cfg, "trainer.best_metric")  # None when the config lacks a trainer
    earlier = result.earlier_wall_time_s if result else 0.0
    return RunRecord(
        status=status or ("failed" if error else "ok"), error=error,
        best_metric_name=best_metric_name, low_is_best=OmegaConf.select(cfg, "trainer.low_is_best"),
        classes=classes_of(cfg),
        best_metric=result.best_metric if result else None, best_epoch=result.best_epoch if result else None,
        final_metric=final.get(best_metric_name), final_loss_val=final.get("loss/val"),
        epochs_done=result.epochs_done if result else 0, steps=result.steps if result else 0,
        wall_time_s=round(seconds + earlier, 2),
        checkpoint=in_run_folder(result.checkpoint, cfg) if result else None,
        best_checkpoint=in_run_folder(result.best_checkpoint, cfg) if result else None,
        **datasplit_used(cfg),
    )


def datasplit_used(cfg: DictConfig) -> dict:
    """Which datasplit the run read (relative to its folder when inside it) and a digest of its
    rows, so runs and a sweep's jobs can be checked for one validation set; None when not written."""
    try:
        path = Path(run_path(cfg, cfg.datasplit_path))
    except Exception:  # a config too broken to name it: the record's error says why
        return {"datasplit": None, "datasplit_digest": None}
    digest = sweep_split.digest(path)
    return {"datasplit": in_run_folder(str(path), cfg) if digest else None, "datasplit_digest": digest}


def classes_of(cfg: DictConfig) -> list[str] | None:
    classes = OmegaConf.select(cfg, "classes")
    return [str(c) for c in classes] if OmegaConf.is_list(classes) else None


def in_run_folder(path: str | None, cfg: DictConfig) -> str | None:
    """A path inside the run folder as relative to it, so the record still holds when the folder moves."""
    output_dir = OmegaConf.select(cfg, "paths.output_dir")
    return relative_to_run(path, output_dir) if output_dir is not None else path
