"""Entry point: compose the config, instantiate the objects, hand them to the engine."""

from __future__ import annotations

import math
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cellmap_train import sweep_stop
from cellmap_train.config import CONFIG_NAME, RUN_STAMP_ENV, check_groups, check_shorthands, config_dir
from cellmap_train.errors import CheckpointError, TrainingInterrupted, UserError
from cellmap_train.hydra_errors import one_line_hydra_errors
from cellmap_train.interrupt import StopRequest
from cellmap_train.sweep import write_result
from cellmap_train.torchrun import is_rank_zero, launched_by_torchrun

# torch and everything built on it (~2 s to import) load when a run starts, not when Hydra reads
# the command line: --help, a mistyped override and the process that launches a --multirun's
# jobs never pay for them.
if TYPE_CHECKING:
    from cellmap_train.engine import FitResult


def run_path(cfg: DictConfig, path: str) -> str:
    """Paths in the config are relative to the run folder unless absolute."""
    return str(Path(cfg.paths.output_dir) / str(path).format(model_name=cfg.model_name))


def train(cfg: DictConfig, stop: StopRequest | None = None) -> FitResult:
    check_groups(cfg)
    check_shorthands(cfg)
    from cellmap_train.engine import distributed, fit, seed_everything
    from cellmap_train.models.build import build_model, freeze_parameters
    from cellmap_train.memory import available_bytes
    from cellmap_train.preflight import (check_init_from, check_memory, check_model_shape, check_numeric_options,
                                         check_optimizer_and_scheduler, check_output_fits_labels, check_run_folder,
                                         meta_forward)

    check_model_shape(cfg)
    check_numeric_options(cfg)
    state_copies = check_optimizer_and_scheduler(cfg)
    meta = meta_forward(cfg)  # after the optimizer, which imports what the meta device needs
    check_output_fits_labels(cfg, meta)
    check_memory(cfg, meta, available_bytes(), state_copies)
    check_run_folder(cfg)
    check_init_from(cfg)
    seed_everything(cfg.seed)  # before the model, so its initial weights follow the seed
    settings = instantiate(cfg.trainer, run_dir=cfg.paths.output_dir)
    model = build_model(cfg.model, cfg.get("model_kwargs"))
    if cfg.get("init_from"):
        start_from(model, cfg, settings, meta.output_layer if meta else None)
    frozen = freeze_parameters(model, cfg.get("freeze"))  # before the optimizer and DDP see which parameters train
    if frozen and is_rank_zero():
        print(frozen)
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    scheduler = instantiate(cfg.scheduler)(optimizer)
    ranks = distributed.init()  # a no-op outside torchrun
    with distributed.main_first(ranks):  # rank 0 makes the demo data and the datasplit; the others read them
        data = instantiate(cfg.data, datasplit_path=run_path(cfg, cfg.datasplit_path),
                           train_transforms=instantiate(cfg.transforms.train), val_transforms=instantiate(cfg.transforms.val))
    weights_from_data = OmegaConf.select(cfg, "loss.pos_weight") == "auto"  # the challenge's weight_loss
    criterion = instantiate(cfg.loss, **({"pos_weight": data.positive_weights()} if weights_from_data else {}))
    if not ranks.is_main:  # only rank 0 writes logs
        return fit(settings, model, optimizer, scheduler, criterion, data, None, stop=stop)
    logger = instantiate(cfg.logger, log_dir=run_path(cfg, cfg.logs_save_path))
    try:
        result = fit(settings, model, optimizer, scheduler, criterion, data, logger,
                     config=OmegaConf.to_container(cfg, resolve=True), stop=stop)
        logger.hparams({"lr": cfg.lr, "batch_size": cfg.batch_size, "seed": cfg.seed, "model": cfg.model_name,
                        "epochs": cfg.epochs, "iterations_per_epoch": cfg.iterations_per_epoch,
                        "optimizer": cfg.optimizer._target_, "scheduler": cfg.scheduler._target_,
                        "loss": cfg.loss._target_, "init_from": cfg.get("init_from") or "",
                        "freeze": ",".join(cfg.get("freeze") or [])},
                       {f"best/{settings.best_metric}": result.best_metric,
                        **{k: v for k, v in result.final_metrics.items() if k.startswith(("dice/", "iou/", "loss/val"))}})
    finally:
        logger.close()
    return result


def start_from(model, cfg: DictConfig, settings, output_layer: str | None) -> None:
    """init_from: a new run's weights from another run's checkpoint. A run that resumes from its
    own checkpoint (load_model) started from there already."""
    from cellmap_train.engine.init_weights import init_weights
    from cellmap_train.engine.loop import find_checkpoint
    from cellmap_train.run_folder import checkpoint_of

    own = find_checkpoint(settings) if settings.load_model else None
    if own is not None:
        line = f"init_from={cfg.init_from} not used: the run continues from its own checkpoint {own[1]}."
    else:
        try:  # a path the user names: from where the command was run
            path, how = checkpoint_of(to_absolute_path(cfg.init_from))
            if how and is_rank_zero():
                print(f"init_from={cfg.init_from}: {how}: {path}")
            line = init_weights(model, path, list(cfg.classes), output_layer)
        except CheckpointError as err:
            raise CheckpointError(f"init_from: {err}") from None
    if is_rank_zero():
        print(line)


def report(result: FitResult, cfg: DictConfig) -> None:
    final = result.final_metrics.get("dice/mean", float("nan"))
    # a run that had nothing left to train has no first epoch of its own: its checkpoint's metrics
    first = f"epoch 1 {result.first_metrics['dice/mean']:.3f} -> " if "dice/mean" in result.first_metrics else ""
    print(f"Validation Dice (mean over {list(cfg.classes)}): {first}final {final:.3f}; "
          f"best {cfg.trainer.best_metric} {result.best_metric:.3f} at epoch {result.best_epoch}")
    print(f"Checkpoint: {result.checkpoint}")
    print(f"TensorBoard: tensorboard --logdir {run_path(cfg, cfg.logs_save_path)}")


def one_line(err: BaseException) -> str:
    """InstantiationException wraps the constructor's error: show the group and the cause."""
    if isinstance(err, InstantiationException):
        cause = err.__cause__ or err
        message = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        key = next((line.split(":", 1)[1].strip() for line in str(err).splitlines() if line.startswith("full_key:")), "")
        prefix = f"{key}: " if key else ""
        return prefix + (message if isinstance(cause, UserError) else f"{type(cause).__name__}: {message}")
    return str(err).strip().splitlines()[0]


def record(result: FitResult | None, cfg: DictConfig, seconds: float, error: str | None = None,
           status: str | None = None) -> dict:
    """What result.json (and a sweep's summary.csv) says about this run: status ok, failed,
    interrupted (a signal stopped it after a checkpoint) or skipped (a signal stopped the sweep)."""
    final = result.final_metrics if result else {}
    best_metric_name = OmegaConf.select(cfg, "trainer.best_metric")  # None when the config lacks a trainer
    return {
        "status": status or ("failed" if error else "ok"), "error": error,
        "best_metric_name": best_metric_name, "low_is_best": OmegaConf.select(cfg, "trainer.low_is_best"),
        "best_metric": result.best_metric if result else None,
        "best_epoch": result.best_epoch if result else None,
        "final_metric": final.get(best_metric_name), "final_loss_val": final.get("loss/val"),
        "epochs_done": result.epochs_done if result else 0, "steps": result.steps if result else 0,
        "wall_time_s": round(seconds, 2), "checkpoint": result.checkpoint if result else None,
        "best_checkpoint": in_run_folder(result.best_checkpoint, cfg) if result else None,
    }


def in_run_folder(path: str | None, cfg: DictConfig) -> str | None:
    """A path inside the run folder as relative to it, so the record still holds when the folder moves."""
    output_dir = OmegaConf.select(cfg, "paths.output_dir")
    if path is None or output_dir is None:
        return path
    try:
        return str(Path(path).resolve().relative_to(Path(output_dir).resolve()))
    except ValueError:  # model_save_path outside the run folder
        return path


@hydra.main(version_base="1.3", config_path=config_dir(), config_name=CONFIG_NAME)
def run(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    try:
        return run_job(cfg, hydra_cfg)
    finally:
        if hydra_cfg.mode == RunMode.MULTIRUN and not sweep_stop.runs_jobs_in_this_process(hydra_cfg.launcher._target_):
            sweep_stop.ignore_signals_between_jobs()


def run_job(cfg: DictConfig, hydra_cfg: DictConfig) -> float:
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
            write_result(output_dir, record(None, cfg, 0.0, error=message, status="skipped"))
        return math.nan
    stop = None
    try:
        if multirun:  # a sweep's job takes signals from its start: one during set-up stops it at its first step
            with sweep_stop.job_stop_request(hydra_cfg.launcher._target_, hydra_cfg.sweep.dir) as stop:
                result = train(cfg, stop)
        else:
            result = train(cfg)
    except Exception as err:
        expected = isinstance(err, (UserError, InstantiationException, OmegaConfBaseException))
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or not (expected or multirun):
            raise
        message = one_line(err) if expected else f"{type(err).__name__}: {err}".splitlines()[0]
        print(f"cellmap_train: error: {message}", file=sys.stderr)
        stopped = isinstance(err, TrainingInterrupted)  # its record keeps the metrics of the epochs it finished
        if writes_files:
            write_result(output_dir, record(err.result if stopped else None, cfg, time.perf_counter() - start,
                                            error=message, status="interrupted" if stopped else None))
        if multirun:
            stop_sweep_if_signalled(stop, hydra_cfg)
            return math.nan
        sys.exit(1)
    if multirun:
        stop_sweep_if_signalled(stop, hydra_cfg)  # the signal came after the last step: the job is done
    if writes_files:
        write_result(output_dir, record(result, cfg, time.perf_counter() - start))
        report(result, cfg)
    return result.best_metric


def stop_sweep_if_signalled(stop: StopRequest | None, hydra_cfg: DictConfig) -> None:
    if stop is not None and stop.requested and sweep_stop.stops_the_sweep(hydra_cfg.launcher._target_):
        sweep_stop.mark_stopped(hydra_cfg.sweep.dir, stop.signal_name)


def main() -> None:
    """The console entry (`python -m cellmap_train`, `cellmap-train`). Under torchrun the ranks
    first agree on one timestamp, so they all use the same run folder."""
    if launched_by_torchrun():
        from cellmap_train.engine import distributed

        distributed.share_env(RUN_STAMP_ENV, lambda: datetime.now().isoformat())
    try:
        with one_line_hydra_errors():  # Hydra's own errors (unknown key, missing option) in one line too
            run()
    except KeyboardInterrupt:  # Ctrl-C outside training (which checkpoints and stops on its own), or a second one
        print("cellmap_train: interrupted", file=sys.stderr)
        sys.exit(130)
