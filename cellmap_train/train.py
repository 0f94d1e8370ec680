"""Entry point: compose the config, instantiate the objects, hand them to the engine.

What a run leaves behind when it ends, fails or is stopped (its record, its one-line error, a
sweep's stop) is `run/outcome.py`'s."""

from __future__ import annotations

import sys
from datetime import datetime
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf

from cellmap_train.config.demo_notice import say_demo_data_by_default
from cellmap_train.config.hydra_errors import one_line_hydra_errors
from cellmap_train.config.location import CONFIG_NAME, RUN_STAMP_ENV, config_dir, run_path
from cellmap_train.config.shorthands import (apply_command_line_shorthands, check_groups, check_shorthands,
                                             command_line_overrides)
from cellmap_train.host.stop_request import StopRequest
from cellmap_train.host.torchrun import is_rank_zero, launched_by_torchrun
from cellmap_train.run.lock import release
from cellmap_train.run.outcome import run_job

# torch and everything built on it (~2 s to import) load when a run starts, not when Hydra reads
# the command line: --help, a mistyped override and the process that launches a --multirun's
# jobs never pay for them.
if TYPE_CHECKING:
    from cellmap_train.engine import FitResult


def train(cfg: DictConfig, stop: StopRequest | None = None) -> FitResult:
    check_groups(cfg)
    check_shorthands(cfg)
    apply_command_line_shorthands(cfg, command_line_overrides())
    from cellmap_train.engine import distributed, fit, seed_everything
    from cellmap_train.engine.checkpointer import Checkpointer
    from cellmap_train.config.build import build_model, freeze_parameters
    from cellmap_train.host.memory import available_bytes
    from cellmap_train.config.preflight import (check_init_from, check_memory, check_model_shape,
                                                check_numeric_options, check_optimizer_and_scheduler,
                                                check_output_fits_labels, check_outputs_writable, check_run_folder,
                                                meta_forward)

    check_model_shape(cfg)
    check_numeric_options(cfg)
    state_copies = check_optimizer_and_scheduler(cfg)
    meta = meta_forward(cfg)  # after the optimizer, which imports what the meta device needs
    check_output_fits_labels(cfg, meta)
    check_memory(cfg, meta, available_bytes(), state_copies)
    check_run_folder(cfg)
    check_outputs_writable(cfg)
    check_init_from(cfg)
    say_demo_data_by_default()  # after the checks: a config error stays one line
    seed_everything(cfg.seed)  # before the model, so its initial weights follow the seed
    settings = instantiate(cfg.trainer, run_dir=cfg.paths.output_dir)
    model = build_model(cfg.model, cfg.get("model_kwargs"))
    if cfg.get("init_from"):
        start_from(model, cfg, Checkpointer.from_settings(settings), meta.output_layer if meta else None)
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


def start_from(model, cfg: DictConfig, checkpointer, output_layer: str | None) -> None:
    """init_from: a new run's weights from another run's checkpoint, a file or a run or sweep
    folder (named from where the command was run); the checkpointer decides whether it is used."""
    line = checkpointer.init_from(model, cfg.init_from, locate_init_from, list(cfg.classes), output_layer,
                                  cfg.get("init_from_classes"))
    if is_rank_zero():
        print(line)


def locate_init_from(source: str):
    """The checkpoint file that init_from's `source` stands for (a run folder: its best one)."""
    from cellmap_train.run.init_from import checkpoint_of

    path, how = checkpoint_of(to_absolute_path(source))
    if how and is_rank_zero():
        print(f"init_from={source}: {how}: {path}")
    return path


@hydra.main(version_base="1.3", config_path=config_dir(), config_name=CONFIG_NAME)
def run(cfg: DictConfig) -> float:
    return run_job(cfg, HydraConfig.get(), train)


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
    finally:  # a run that ended in sys.exit skipped Hydra's end callbacks: let its folder go (runs in one process)
        release()
