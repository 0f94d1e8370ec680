"""The one owner of how a run starts and what it keeps: finding a checkpoint (load_model=latest or
best), resuming from it, init_from (another run's weights), saving each epoch and pruning.

    checkpointer = Checkpointer.from_settings(settings, config)
    state = checkpointer.start(model, device, RunState(...))   # fresh, resumed, or from weights only
    ... make the data loaders (they take their seeds from the RNG) ...
    checkpointer.restore(state, optimizer, scheduler, scaler, batch_size)   # optimizer, scheduler, RNG
    checkpointer.save(epoch, objects, state, metrics)   # then prunes

The file format (one dict, written atomically, read weights-only) is `checkpoint.py`'s."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from cellmap_train.engine.checkpoint import (
    best_epoch_from_logs, epoch_files, format_path, is_full, latest_checkpoint, load_training_state, load_weights,
    prune_checkpoints, read_checkpoint, rng_state, save_checkpoint,
)
from cellmap_train.engine.resume_changes import changed_on_resume
from cellmap_train.engine.run_state import Best, RunState, floats
from cellmap_train.errors import CheckpointError, ConfigError

Found = tuple[int, Path]  # (epoch, file)


@dataclass
class TrainingObjects:
    """What a checkpoint holds the state dicts of."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object | None
    scaler: torch.amp.GradScaler


@dataclass
class Checkpointer:
    template: Path  # model_save_path under the run folder: '.../{model_name}_{epoch}.pth'
    model_name: str
    load_model: str | None = None  # latest | best | None
    model_to_load: str | None = None  # another model's checkpoints of this folder: its weights only
    logs_template: Path | None = None  # logs_save_path under the run folder (load_model=best reads it)
    ranking_tag: str = "dice/mean"  # the metric "best" is judged on (Best.tag)
    low_is_best: bool = False
    smoothing_window: int = 1
    keep_last: int | None = None
    iterations_per_epoch: int = 1  # a weights-only file's epoch number -> its step
    config: dict | None = None  # the resolved config, saved in each checkpoint
    is_main: bool = True  # only rank 0 writes

    def __post_init__(self):
        self.model_to_load = self.model_to_load or self.model_name
        self._resumed: tuple[dict, Path] | None = None  # read by start, restored by restore

    @classmethod
    def from_settings(cls, settings, config: dict | None = None, is_main: bool = True,
                      ranking_tag: str | None = None) -> "Checkpointer":
        """From TrainSettings; `ranking_tag` defaults to what the settings rank epochs by."""
        run_dir = Path(settings.run_dir)
        tag = ranking_tag or Best(settings.best_metric, settings.low_is_best, settings.best_metric_ema).tag
        return cls(run_dir / settings.model_save_path, settings.model_name, settings.load_model, settings.model_to_load,
                   run_dir / settings.logs_save_path, tag, settings.low_is_best, settings.smoothing_window,
                   settings.keep_last, settings.iterations_per_epoch, config, is_main)

    # ---- finding
    def path(self, epoch: int | str, model_name: str | None = None) -> Path:
        return format_path(self.template, model_name or self.model_name, epoch)

    def epochs(self, model_name: str | None = None) -> dict[int, Path]:
        """{epoch: file} of this model's checkpoints (or `model_name`'s), by epoch."""
        return epoch_files(self.template, model_name or self.model_name)

    def latest(self) -> Found | None:
        """The highest epoch by the number in the file name, never by modification time."""
        return latest_checkpoint(self.template, self.model_to_load)

    def best(self) -> Found | None:
        """The best `ranking_tag` in the TensorBoard logs, among the files that exist; averaged
        over `smoothing_window` epochs around each, as the challenge does."""
        files = self.epochs(self.model_to_load)
        log_dir = format_path(self.logs_template or self.template.parent, self.model_to_load, "")
        epoch = best_epoch_from_logs(log_dir, self.ranking_tag, self.low_is_best, self.smoothing_window, among=files)
        return (epoch, files[epoch]) if epoch is not None else None

    def find(self) -> Found | None:
        """The checkpoint load_model names, or None (also for load_model=null)."""
        return {"latest": self.latest, "best": self.best}.get(self.load_model, lambda: None)()

    def refuse_overwrite(self) -> None:
        """A fresh run (load_model=null) in a folder that holds this model's checkpoints would
        replace them epoch by epoch: a ConfigError naming them."""
        found = self.epochs()
        if found:
            folder = next(iter(found.values())).parent
            raise ConfigError(f"{folder} already holds checkpoints of an earlier run (epochs {min(found)}..{max(found)}): "
                              f"continue it with load_model=latest, pick another hydra.run.dir, "
                              f"or replace them with overwrite_checkpoints=true")

    # ---- starting
    def init_from(self, model: torch.nn.Module, source: str, locate: Callable[[str], str | os.PathLike],
                  classes: Sequence[str], output_layer: str | None, file_classes: Sequence[str] | None = None) -> str:
        """init_from: a new run's weights from another run's checkpoint (`locate` turns the user's
        `source`, a file or a run or sweep folder, into a file). A run that continues from its own
        checkpoint (load_model) does not use it. Returns the line that says what was done."""
        from cellmap_train.engine.warm_start import init_weights

        own = self.find()
        if own is not None:
            return f"init_from={source} not used: the run continues from its own checkpoint {own[1]}."
        try:
            return init_weights(model, locate(source), list(classes), output_layer, file_classes)
        except CheckpointError as err:
            raise CheckpointError(f"init_from: {err}") from None

    def start(self, model: torch.nn.Module, device: torch.device, state: RunState) -> RunState:
        """Load what load_model finds into `model` and `state`: a full checkpoint of this model
        resumes (its optimizer, scheduler and RNG follow in `restore`); a weights-only file keeps
        its epoch numbering; another model's file gives its weights only. `state` as given otherwise."""
        found = self.find()
        if self.load_model and found is None:
            print(f"No checkpoint for load_model={self.load_model} matching "
                  f"{self.path('*', self.model_to_load)}: starting fresh.")
        if found is None:
            return state
        epoch, path = found
        saved = read_checkpoint(path, map_location=device)
        load_weights(model, saved, path)
        if self.model_to_load != self.model_name:
            print(f"Initialised model weights from {path}.")
        elif is_full(saved):
            state.load(saved)
            state.checkpoint, self._resumed = str(path), (saved, path)
        else:  # the challenge's weights-only files: keep its epoch numbering, so nothing is overwritten
            state.epoch, state.step, state.checkpoint = epoch, epoch * self.iterations_per_epoch, str(path)
            print(f"Initialised model weights from {path} (weights only: optimizer, scheduler and RNG start "
                  f"fresh); continuing at epoch {epoch + 1}.")
        return state

    def restore(self, state: RunState, optimizer, scheduler, scaler, batch_size: int | None = None) -> None:
        """The optimizer, scheduler, grad scaler and RNG of the checkpoint `start` resumed from
        (after the data loaders took their seeds, so the RNG continues where it stopped), and a
        line for each setting changed since (an explicitly changed lr becomes the new base rate)."""
        if self._resumed is None:
            return
        (saved, path), self._resumed = self._resumed, None
        load_training_state(saved, path, optimizer, scheduler, scaler)
        print(f"Resumed from {path} (epoch {state.epoch}, step {state.step}).")
        later = [e for e, file in self.epochs().items() if e > state.epoch and file != path]
        if later:  # load_model=best: say that the epochs after the best one are trained again
            print(f"Checkpoints of epochs {later[0]}..{later[-1]} will be replaced as those epochs are trained again.")
        for line in changed_on_resume(saved, self.config, optimizer, scheduler, batch_size):
            print(line)

    # ---- saving
    def state_dict(self, objects: TrainingObjects, state: RunState, batch_size: int | None) -> dict:
        """A full checkpoint of the run as it stands (callers add the epoch's metrics)."""
        optimizer, scheduler = objects.optimizer, objects.scheduler
        return {
            "model": objects.model.state_dict(), "optimizer": optimizer.state_dict(),
            "optimizer_type": type(optimizer).__name__,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scheduler_type": type(scheduler).__name__ if scheduler is not None else None,
            "scaler": objects.scaler.state_dict(), **state.to_checkpoint(), "batch_size": batch_size,
            "rng": rng_state(), "config": self.config or {},
        }

    def save(self, objects: TrainingObjects, state: RunState, metrics: dict, batch_size: int | None = None) -> Path:
        """The checkpoint of the epoch `state` finished (on rank 0), then prune all but the
        `keep_last` newest and the best."""
        path = self.path(state.epoch)
        if self.is_main:
            save_checkpoint({**self.state_dict(objects, state, batch_size), "metrics": floats(metrics)}, path)
            prune_checkpoints(self.template, self.model_name, self.keep_last, keep=[state.best.epoch])
        return path

    def save_partial(self, objects: TrainingObjects, state: RunState, batch_size: int | None = None) -> Path:
        """The step a signal stopped at, under the name of the epoch in progress: load_model=latest
        continues inside it, and the finished epoch later replaces the file."""
        path = self.path(state.epoch + 1)
        if self.is_main:
            save_checkpoint(self.state_dict(objects, state, batch_size), path)
        return path

    def best_checkpoint(self, state: RunState) -> str | None:
        """The file of the best epoch (kept when older ones are pruned)."""
        return str(self.path(state.best.epoch)) if state.best.epoch is not None else None
