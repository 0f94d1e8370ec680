"""The trainer's switches (conf/trainer/) as a plain dataclass, plus device and seeding helpers."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from cellmap_train.errors import ConfigError


@dataclass
class TrainSettings:
    epochs: int = 1000
    iterations_per_epoch: int = 1000
    seed: int = 42
    device: str | None = None
    model_name: str = "model"
    model_save_path: str = "checkpoints/{model_name}_{epoch}.pth"
    logs_save_path: str = "tensorboard/{model_name}"  # where load_model=best reads the metric
    load_model: str | None = "latest"  # latest | best | None
    model_to_load: str | None = None
    validation_time_limit: float | None = None
    validation_batch_limit: int | None = None
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = None
    amp: str | None = None  # None | bf16 | fp16
    compile: bool = False
    channels_last: bool | None = None  # None = on for CPU (faster oneDNN convolutions), off elsewhere
    deterministic: bool = False
    cudnn_benchmark: bool | None = None  # None = on for CUDA unless deterministic (cuDNN times its algorithms once per shape)
    scheduler_interval: str = "auto"  # auto | epoch | step (auto: step for OneCycleLR/CyclicLR)
    best_metric: str = "dice/mean"
    low_is_best: bool = False
    best_metric_ema: float | None = None  # e.g. 0.9: rank epochs by an EMA of best_metric (nnU-Net)
    smoothing_window: int = 1  # load_model=best: rank epochs by the mean over this many around each (the challenge's)
    keep_last: int | None = None  # checkpoints kept besides the best one (None = all)
    early_stopping_patience: int | None = None  # epochs without a new best before stopping
    progress_bar: bool = True
    log_every_n_steps: int = 50  # a plain progress line every N steps when stderr is not a terminal
    log_every_n_seconds: float | None = 30.0  # ... and at the first step after this long without one (None = off)
    skip_nonfinite_steps: bool = False  # a NaN/inf loss skips its step (with a line) instead of stopping the run
    num_threads: int | None = None  # torch CPU threads of this process (cap it when jobs run side by side)
    run_dir: str = "."  # relative paths (model_save_path, logs_save_path) are taken from here

    def __post_init__(self):
        self.model_to_load = self.model_to_load or self.model_name
        if self.load_model in ("null", "none", "None", ""):
            self.load_model = None
        checks = [
            (self.epochs >= 1, f"trainer.epochs must be >= 1, got {self.epochs}"),
            (self.iterations_per_epoch >= 1, f"trainer.iterations_per_epoch must be >= 1, got {self.iterations_per_epoch}"),
            (self.gradient_accumulation_steps >= 1, f"trainer.gradient_accumulation_steps must be >= 1, got {self.gradient_accumulation_steps}"),
            (self.amp in (None, "bf16", "fp16"), f"trainer.amp must be null, bf16 or fp16, got {self.amp!r}"),
            (self.load_model in (None, "latest", "best"), f"load_model must be latest, best or null, got {self.load_model!r}"),
            ("{epoch}" in str(self.model_save_path), f"model_save_path must contain '{{epoch}}', got {self.model_save_path!r}"),
            (self.scheduler_interval in ("auto", "epoch", "step"), f"trainer.scheduler_interval must be auto, epoch or step, got {self.scheduler_interval!r}"),
            (self.best_metric_ema is None or 0 <= self.best_metric_ema < 1, f"trainer.best_metric_ema must be null or in [0, 1), got {self.best_metric_ema}"),
            (isinstance(self.smoothing_window, int) and not isinstance(self.smoothing_window, bool)
             and self.smoothing_window >= 1, f"trainer.smoothing_window must be an integer >= 1, got {self.smoothing_window!r}"),
            (_none_or_at_least(self.keep_last, 1), f"trainer.keep_last must be null or >= 1, got {self.keep_last}"),
            (_none_or_at_least(self.early_stopping_patience, 1), f"trainer.early_stopping_patience must be null or >= 1, got {self.early_stopping_patience}"),
            (self.max_grad_norm is None or self.max_grad_norm > 0, f"trainer.max_grad_norm must be null or > 0, got {self.max_grad_norm}"),
            (self.num_threads is None or self.num_threads >= 1, f"trainer.num_threads must be null or >= 1, got {self.num_threads}"),
            (self.log_every_n_steps >= 1, f"trainer.log_every_n_steps must be >= 1, got {self.log_every_n_steps}"),
            (self.log_every_n_seconds is None or self.log_every_n_seconds >= 0,
             f"trainer.log_every_n_seconds must be null or >= 0, got {self.log_every_n_seconds}"),
            (self.cudnn_benchmark is None or isinstance(self.cudnn_benchmark, bool), f"trainer.cudnn_benchmark must be null, true or false, got {self.cudnn_benchmark!r}"),
            (not (self.cudnn_benchmark and self.deterministic),
             "trainer.cudnn_benchmark=true contradicts trainer.deterministic=true (the autotuner may pick a different "
             "algorithm each run); leave cudnn_benchmark null"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        pick_device(self.device)  # a wrong device fails here, before any data is read


def _none_or_at_least(value, low: int) -> bool:
    return value is None or value >= low


def pick_device(name: str | None) -> torch.device:
    """None = cuda, then mps, then cpu."""
    if name:
        try:
            device = torch.device(name)
        except (RuntimeError, TypeError) as err:  # TypeError: neither a name nor an index (device=1.5)
            raise ConfigError(f"device={name!r}: not a device; use null, cpu, cuda, cuda:N or mps") from err
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device={name!r}: CUDA is not available on this machine (device=null picks what is)")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def wants_cudnn_benchmark(setting: bool | None, deterministic: bool, device: torch.device) -> bool:
    """cuDNN's autotuner times the convolution algorithms once per input shape and keeps the
    fastest. A training run's shapes are fixed, so `None` turns it on for CUDA (nnU-Net does too)
    unless the run must be deterministic; elsewhere it is meaningless."""
    return (device.type == "cuda" and not deterministic) if setting is None else setting


def set_backends(settings: TrainSettings, device: torch.device) -> None:
    """The process-wide torch switches the settings ask for: CPU threads, cuDNN's autotuner."""
    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    torch.backends.cudnn.benchmark = wants_cudnn_benchmark(settings.cudnn_benchmark, settings.deterministic, device)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
