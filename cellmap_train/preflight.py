"""Checks that need the composed config but no data: run before anything is read or written,
so a contradictory config or a run folder holding another run's checkpoints fails in one line."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from cellmap_train.data.dataset import ArrayInfo
from cellmap_train.engine.checkpoint import epoch_files
from cellmap_train.errors import ConfigError


def check_model_shape(cfg: DictConfig) -> None:
    """Sample shapes and scales are well-formed; a 2D model trains on [1,H,W] (or [H,W]) samples,
    a 3D model on [D,H,W] with D > 1."""
    for key in ("input_array_info", "target_array_info"):
        if key in cfg:
            ArrayInfo.parse(cfg[key], key)  # shape and scale well-formed, or one line naming the key
    dims = cfg.model.get("spatial_dims") if "model" in cfg else None
    shape = list(cfg.input_array_info.shape)
    if dims not in (2, 3):  # null: the model follows the shape (ViT-V-Net), or a custom model
        return
    is_2d = len(shape) == 2 or (len(shape) == 3 and shape[0] == 1)
    if dims == 2 and not is_2d:
        raise ConfigError(f"model={cfg.model_name} is 2D but input_array_info.shape={shape} is 3D: "
                          f"use shape [1,H,W] or a 3D model (model=3d_unet)")
    if dims == 3 and is_2d:
        raise ConfigError(f"model={cfg.model_name} is 3D but input_array_info.shape={shape} is 2D: "
                          f"use shape [D,H,W] with D > 1 or a 2D model (model=2d_unet)")


def check_run_folder(cfg: DictConfig) -> None:
    """load_model=null in a folder that already holds checkpoints of this model would replace
    them epoch by epoch: refuse, unless the user says so (overwrite_checkpoints=true)."""
    if cfg.get("load_model") or cfg.get("overwrite_checkpoints"):
        return
    template = Path(cfg.paths.output_dir) / str(cfg.model_save_path)
    found = epoch_files(template, str(cfg.model_name))
    if found:
        folder = next(iter(found.values())).parent
        raise ConfigError(f"{folder} already holds checkpoints of an earlier run (epochs {min(found)}..{max(found)}): "
                          f"continue it with load_model=latest, pick another hydra.run.dir, "
                          f"or replace them with overwrite_checkpoints=true")
