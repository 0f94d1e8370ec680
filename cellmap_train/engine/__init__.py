"""The engine: a plain PyTorch loop over plain objects (no Hydra in here)."""

from cellmap_train.engine.checkpoint import load_best_val, load_latest
from cellmap_train.engine.checkpointer import Checkpointer
from cellmap_train.engine.loop import FitResult, fit
from cellmap_train.engine.settings import TrainSettings, pick_device, seed_everything

__all__ = ["Checkpointer", "FitResult", "TrainSettings", "fit", "load_best_val", "load_latest", "pick_device",
           "seed_everything"]
