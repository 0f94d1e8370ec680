"""Entry point: compose the config, instantiate the objects, hand them to the engine."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cellmap_train.config import CONFIG_NAME, check_shorthands, config_dir
from cellmap_train.engine import FitResult, fit, seed_everything
from cellmap_train.errors import UserError


def run_path(cfg: DictConfig, path: str) -> str:
    """Paths in the config are relative to the run folder unless absolute."""
    return str(Path(cfg.paths.output_dir) / str(path).format(model_name=cfg.model_name))


def train(cfg: DictConfig) -> FitResult:
    check_shorthands(cfg)
    seed_everything(cfg.seed)  # before the model, so its initial weights follow the seed
    settings = instantiate(cfg.trainer, run_dir=cfg.paths.output_dir)
    model = instantiate(OmegaConf.merge(cfg.model, cfg.get("model_kwargs") or {}))
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    scheduler = instantiate(cfg.scheduler)(optimizer)
    criterion = instantiate(cfg.loss)
    data = instantiate(cfg.data, datasplit_path=run_path(cfg, cfg.datasplit_path),
                       train_transforms=instantiate(cfg.transforms.train), val_transforms=instantiate(cfg.transforms.val))
    logger = instantiate(cfg.logger, log_dir=run_path(cfg, cfg.logs_save_path))
    try:
        result = fit(settings, model, optimizer, scheduler, criterion, data, logger,
                     config=OmegaConf.to_container(cfg, resolve=True))
        logger.hparams({"lr": cfg.lr, "batch_size": cfg.batch_size, "seed": cfg.seed, "model": cfg.model_name},
                       {settings.best_metric: result.best_metric, **{k: v for k, v in result.final_metrics.items() if k.startswith(("dice/", "loss/val"))}})
    finally:
        logger.close()
    return result


def report(result: FitResult, cfg: DictConfig) -> None:
    first, final = result.first_metrics.get("dice/mean", float("nan")), result.final_metrics.get("dice/mean", float("nan"))
    print(f"Validation Dice (mean over {list(cfg.classes)}): epoch 1 {first:.3f} -> final {final:.3f}; "
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


@hydra.main(version_base="1.3", config_path=config_dir(), config_name=CONFIG_NAME)
def main(cfg: DictConfig) -> float:
    try:
        result = train(cfg)
    except (UserError, InstantiationException) as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"cellmap_train: error: {one_line(err)}", file=sys.stderr)
        sys.exit(1)
    report(result, cfg)
    return result.best_metric
