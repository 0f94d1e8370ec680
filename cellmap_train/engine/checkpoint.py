"""Checkpoint files: one per epoch, written atomically, read with `weights_only=True`.

A full checkpoint is a dict {model, optimizer, scheduler, scaler, epoch, step, best_metric,
metrics, rng, config}. A bare state_dict (the challenge's format) is also accepted and
initialises the model only.
"""

from __future__ import annotations

import glob
import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from cellmap_train.errors import CheckpointError

FULL_KEYS = {"model", "optimizer", "epoch", "step"}


def format_path(template: str | os.PathLike, model_name: str, epoch: int | str) -> Path:
    return Path(str(template).format(model_name=model_name, epoch=epoch))


def epoch_files(template: str | os.PathLike, model_name: str) -> dict[int, Path]:
    """{epoch: path} for every file matching the template ('{epoch}' read from the name)."""
    pattern = str(template).replace("{model_name}", model_name)
    head, _, tail = pattern.partition("{epoch}")
    regex = re.compile(re.escape(head) + r"(\d+)" + re.escape(tail) + "$")
    found = {}
    for name in glob.glob(glob.escape(head) + "*" + glob.escape(tail)):
        match = regex.match(name)
        if match:
            found[int(match.group(1))] = Path(name)
    return dict(sorted(found.items()))


def latest_checkpoint(template: str | os.PathLike, model_name: str) -> Path | None:
    """Highest epoch by the number in the file name, never by modification time."""
    files = epoch_files(template, model_name)
    return files[max(files)] if files else None


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write to a temporary file in the same folder, fsync, then rename over the final name:
    a crash leaves the previous file or the complete new one, never a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({reason[:200]})") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: checkpoint holds a {type(state).__name__}, expected a dict")
    return state


def is_full(state: dict) -> bool:
    return FULL_KEYS <= set(state)


def load_weights(model: torch.nn.Module, state: dict, path: str | os.PathLike) -> None:
    """Strict load: a checkpoint of another architecture is an error naming the file."""
    weights = state["model"] if is_full(state) else state
    try:
        model.load_state_dict(weights, strict=True)
    except (RuntimeError, KeyError, TypeError) as err:
        first = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise CheckpointError(f"{path}: does not match the model ({detail[:300]})") from err


def load_latest(search_path: str | os.PathLike, model: torch.nn.Module, model_name: str | None = None) -> int | None:
    """Load the highest-epoch checkpoint matching `search_path` (a template with '{epoch}',
    and optionally '{model_name}') into `model`; return its epoch, or None when none exists."""
    template = str(search_path)
    if "{model_name}" in template and model_name is None:
        model_name = type(model).__name__
    path = latest_checkpoint(template, model_name or "")
    if path is None:
        return None
    state = read_checkpoint(path)
    load_weights(model, state, path)
    return int(state["epoch"]) if is_full(state) else max(epoch_files(template, model_name or ""))


def best_epoch_from_logs(logs_save_path: str | os.PathLike, tag: str, low_is_best: bool, smoothing_window: int = 1) -> int | None:
    """The epoch with the best (optionally moving-averaged) value of scalar `tag` in the
    TensorBoard event files under `logs_save_path`; steps of epoch scalars are epoch numbers."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[int, float] = {}
    for events in sorted(Path(logs_save_path).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags().get("scalars", []):
            values.update({event.step: event.value for event in acc.Scalars(tag)})
    values = {step: v for step, v in values.items() if np.isfinite(v)}
    if not values:
        return None
    steps = sorted(values)
    series = np.array([values[s] for s in steps])
    if smoothing_window > 1:
        padded = np.pad(series, (smoothing_window // 2, smoothing_window - 1 - smoothing_window // 2), mode="edge")
        series = np.convolve(padded, np.ones(smoothing_window) / smoothing_window, mode="valid")
    index = int(np.argmin(series) if low_is_best else np.argmax(series))
    return steps[index]


def load_best_val(logs_save_path: str | os.PathLike, model_save_path: str | os.PathLike, model: torch.nn.Module,
                  low_is_best: bool = True, smoothing_window: int = 1, tag: str = "loss/val",
                  model_name: str | None = None) -> int | None:
    """Load the checkpoint of the epoch with the best validation scalar (default `loss/val`,
    lowest best); return that epoch, or None when there are no logs or no such checkpoint."""
    epoch = best_epoch_from_logs(logs_save_path, tag, low_is_best, smoothing_window)
    if epoch is None:
        return None
    files = epoch_files(model_save_path, model_name or "")
    if epoch not in files:
        return None
    state = read_checkpoint(files[epoch])
    load_weights(model, state, files[epoch])
    return epoch
