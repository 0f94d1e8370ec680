"""A trained model from what a user names: a run folder (its best checkpoint), a sweep folder
(its best job's), or a checkpoint file; with the composed config saved in the checkpoint, which
says which model, classes, voxel size, sample shape and raw normalisation it was trained with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cellmap_train.data.array_info import ArrayInfo
from cellmap_train.engine.checkpoint import is_full, read_checkpoint
from cellmap_train.errors import CheckpointError, ConfigError
from cellmap_train.predict.predictor import ModelSpec
from cellmap_train.run.init_from import checkpoint_of
from cellmap_train.run.record import has_record


@dataclass
class TrainedRun:
    checkpoint: Path
    how: str | None  # how a folder led to the checkpoint
    state: dict
    config: dict  # the run's composed, resolved config
    run_dir: Path | None

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.config["classes"]]

    def datasplit(self) -> Path:
        """The run's datasplit CSV (relative to its folder unless absolute)."""
        path = Path(str(self.config.get("datasplit_path", "datasplit.csv")))
        if path.is_absolute():
            return path
        base = self.run_dir or Path(str(self.config.get("paths", {}).get("output_dir", ".")))
        return base / path


def find_trained(path: str | Path) -> TrainedRun:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found (name a run folder, a sweep folder or a checkpoint file)")
    checkpoint, how = checkpoint_of(path)
    state = read_checkpoint(checkpoint)
    if not is_full(state) or not isinstance(state.get("config"), dict):
        raise CheckpointError(f"{checkpoint}: a weights-only checkpoint does not say which model, classes and voxel size "
                              f"it was trained with; name the run folder or a checkpoint cellmap_train wrote")
    return TrainedRun(checkpoint, how, state, state["config"], run_folder_of(checkpoint))


def run_folder_of(checkpoint: Path) -> Path | None:
    """The run folder holding a checkpoint (the nearest folder above it with a run record or .hydra)."""
    for folder in checkpoint.resolve().parents:
        if has_record(folder) or (folder / ".hydra").is_dir():
            return folder
    return None


def model_spec(config: dict) -> ModelSpec:
    """Classes and tile geometry of the run. Input and output must share a voxel size (the
    sliding window steps on one grid)."""
    source = ArrayInfo.parse(config.get("input_array_info"), "input_array_info")
    target = ArrayInfo.parse(config.get("target_array_info") or config.get("input_array_info"), "target_array_info")
    if tuple(source.scale) != tuple(target.scale):
        raise ConfigError(f"the run reads {list(source.scale)} nm and predicts {list(target.scale)} nm: sliding-window "
                          f"prediction needs one voxel size for both")
    if any((i - o) % 2 for i, o in zip(source.shape, target.shape)) or any(i < o for i, o in zip(source.shape, target.shape)):
        raise ConfigError(f"input shape {list(source.shape)} must exceed the output shape {list(target.shape)} by an even "
                          f"number of voxels on each axis")
    return ModelSpec([str(c) for c in config["classes"]], tuple(source.scale), tuple(source.shape), tuple(target.shape))
