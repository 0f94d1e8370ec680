"""Checkpoint files: one per epoch, written atomically, read with `weights_only=True`.

A full checkpoint is a dict {model, optimizer, optimizer_type, scheduler, scheduler_type, scaler,
epoch, step, epoch_steps, epoch_loss_sum, best_metric, best_epoch, tracked_metric, loss_smoothing,
first_metrics, first_epoch, wall_time_s, batch_size, metrics, rng, config} (the run's part of it is
`run_state.RunState`'s; older files without the later keys still resume). A bare state_dict (the
challenge's format) is also accepted and initialises the model only. Which file to read, and when
to write one, is `checkpointer.Checkpointer`'s.
"""

from __future__ import annotations

import glob
import os
import random
import re
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from cellmap_train.engine.pause_hook import pause_point
from cellmap_train.errors import CheckpointError
from cellmap_train.files import RunWriteError, atomic_write

FULL_KEYS = {"model", "optimizer", "epoch", "step"}
TORCH_SAVE_HEADERS = (b"PK\x03\x04", b"\x80")  # a zip archive (torch >= 1.6), a pickle (older files)


def format_path(template: str | os.PathLike, model_name: str, epoch: int | str) -> Path:
    return Path(str(template).format(model_name=model_name, epoch=epoch))


def epoch_files(template: str | os.PathLike, model_name: str) -> dict[int, Path]:
    """{epoch: path} for every file matching the template ('{epoch}' read from the name), by epoch."""
    pattern = str(template).replace("{model_name}", model_name)
    head, _, tail = pattern.partition("{epoch}")
    regex = re.compile(re.escape(head) + r"(\d+)" + re.escape(tail) + "$")
    found = {}
    for name in glob.glob(glob.escape(head) + "*" + glob.escape(tail)):
        match = regex.match(name)
        if match:
            found[int(match.group(1))] = Path(name)
    return dict(sorted(found.items()))


def latest_checkpoint(template: str | os.PathLike, model_name: str) -> tuple[int, Path] | None:
    """(epoch, path) of the highest epoch by the number in the file name, never by modification time."""
    files = epoch_files(template, model_name)
    return (max(files), files[max(files)]) if files else None


def prune_checkpoints(template: str | os.PathLike, model_name: str, keep_last: int | None, keep: Iterable[int | None] = ()) -> list[Path]:
    """Delete all but the `keep_last` highest epochs and the epochs in `keep` (the best one)."""
    if keep_last is None:
        return []
    files = epoch_files(template, model_name)
    kept = set(sorted(files)[-keep_last:]) | {e for e in keep if e is not None}
    removed = [path for epoch, path in files.items() if epoch not in kept]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


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


class _WriteErrors:
    """A file for torch.save that keeps the OSError of a failed write (torch turns it into a
    RuntimeError without the cause: `[enforce fail at inline_container.cc] . unexpected pos`)."""

    def __init__(self, handle):
        self.handle, self.error = handle, None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.handle.flush()


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write to a temporary file in the same folder, fsync, then rename over the final name:
    a crash leaves the previous file or the complete new one, never a truncated one."""
    path = Path(path)
    try:
        with atomic_write(path, "wb") as handle:
            writer = _WriteErrors(handle)
            try:
                torch.save(state, writer)
            except RuntimeError:  # torch reports a failed write as "unexpected pos ...": raise what the OS said
                if writer.error is None:
                    raise
                raise writer.error from None
            pause_point("checkpoint_write")
    except RunWriteError as err:
        raise RunWriteError(f"{err}; checkpoints of earlier epochs are kept") from err
    for stale in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):  # left by a killed earlier run
        stale.unlink(missing_ok=True)
    return path


ANSI = re.compile(r"\x1b\[[0-9;]*m")  # torch's bold "do those steps only if you trust the source"


def _first_line(err: BaseException, limit: int = 300) -> str:
    lines = [line.strip() for line in ANSI.sub("", str(err)).strip().splitlines() if line.strip()]
    text = " ".join(lines[:3])
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


def pickled_class(path: Path) -> str | None:
    """The first class a torch.save zip archive's pickle names (read with pickletools, nothing
    run), when it is not one a state_dict is made of: `torch.save(model)` writes the model's class."""
    import pickletools
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            member = next((n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            data = archive.read(member) if member else b""
        strings: list[str] = []
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
                strings.append(arg)
            name = arg.replace(" ", ".") if op.name == "GLOBAL" else (
                ".".join(strings[-2:]) if op.name == "STACK_GLOBAL" and len(strings) >= 2 else None)
            if name and not name.startswith(("torch._utils.", "collections.", "torch._tensor.")) \
                    and not name.endswith("Storage") and name.rsplit(".", 1)[-1][:1].isupper():
                return name
    except Exception:  # noqa: BLE001 - not a readable archive: the generic message applies
        return None
    return None


def read_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: a folder, not a checkpoint file (e.g. its checkpoints/<model_name>_<epoch>.pth)")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head and not head.startswith(TORCH_SAVE_HEADERS):  # an empty file is a truncated one, below
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (torch.save writes a zip archive or a pickle; "
                              f"this file starts with {head!r})")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        whole = pickled_class(path) if "Weights only load failed" in str(err) else None
        if whole:
            raise CheckpointError(f"{path}: a whole pickled {whole} (what torch.save(model) writes), not a state_dict; "
                                  f"loading it would run code from the file, so only weights are read: save them with "
                                  f"torch.save(model.state_dict(), 'weights.pth') and use that file") from err
        raise CheckpointError(f"{path}: not a readable checkpoint, truncated or corrupt? ({_first_line(err, 200)})") from err
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
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: does not match the model ({_first_line(err)})") from err


def load_training_state(state: dict, path: str | os.PathLike, optimizer, scheduler, scaler) -> None:
    """Optimizer, scheduler, grad scaler and RNG of a full checkpoint; a checkpoint written with
    another optimizer or scheduler is an error naming the file, not a silent partial resume."""
    for key, current in (("optimizer_type", optimizer), ("scheduler_type", scheduler)):
        saved, now = state.get(key), type(current).__name__
        if saved is not None and current is not None and saved != now:
            raise CheckpointError(f"{path}: cannot resume, it was written with {saved} and this run uses {now} "
                                  f"(start fresh with load_model=null, or a new run folder)")
    try:
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):  # empty when saved without fp16; the scaler then starts fresh
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
    except (RuntimeError, KeyError, TypeError, ValueError, IndexError) as err:
        raise CheckpointError(f"{path}: cannot resume the optimizer/scheduler/RNG state ({_first_line(err)})") from err


def load_latest(search_path: str | os.PathLike, model: torch.nn.Module, model_name: str | None = None) -> int | None:
    """Load the highest-epoch checkpoint matching `search_path` (a template with '{epoch}',
    and optionally '{model_name}') into `model`; return its epoch, or None when none exists."""
    template = str(search_path)
    if "{model_name}" in template and model_name is None:
        model_name = type(model).__name__
    found = latest_checkpoint(template, model_name or "")
    if found is None:
        return None
    epoch, path = found
    state = read_checkpoint(path)
    load_weights(model, state, path)
    return int(state["epoch"]) if is_full(state) else epoch


def read_scalars(logs_save_path: str | os.PathLike, tag: str) -> dict[int, float]:
    """{step: value} of scalar `tag` in every event file under `logs_save_path`; a later file
    (a resumed run) wins for a step written twice."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[int, float] = {}
    for events in sorted(Path(logs_save_path).rglob("events.out.tfevents.*"), key=_event_file_order):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags().get("scalars", []):
            values.update({event.step: event.value for event in acc.Scalars(tag)})
    return values


def _event_file_order(path: Path) -> tuple:
    """Event files are named events.out.tfevents.<unix time>.<host>...: order by that time."""
    parts = path.name.split(".")
    return (int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else 0, str(path))


def best_epoch_from_logs(logs_save_path: str | os.PathLike, tag: str, low_is_best: bool, smoothing_window: int = 1,
                         among: Iterable[int] | None = None) -> int | None:
    """The epoch with the best (optionally moving-averaged) value of scalar `tag` in the
    TensorBoard event files under `logs_save_path`; steps of epoch scalars are epoch numbers.
    `among` restricts the choice (to epochs that still have a checkpoint file)."""
    if smoothing_window < 1:
        raise ValueError(f"smoothing_window must be >= 1, got {smoothing_window}")
    values = {step: v for step, v in read_scalars(logs_save_path, tag).items() if np.isfinite(v)}
    if not values:
        return None
    steps = sorted(values)
    series = np.array([values[s] for s in steps])
    if smoothing_window > 1:
        padded = np.pad(series, (smoothing_window // 2, smoothing_window - 1 - smoothing_window // 2), mode="edge")
        series = np.convolve(padded, np.ones(smoothing_window) / smoothing_window, mode="valid")
    allowed = None if among is None else set(among)
    candidates = [(value, step) for step, value in zip(steps, series) if allowed is None or step in allowed]
    if not candidates:
        return None
    # ties go to the earliest epoch, like argmin/argmax
    best = min(candidates, key=lambda c: (c[0] if low_is_best else -c[0], c[1]))
    return best[1]


def load_best_val(logs_save_path: str | os.PathLike, model_save_path: str | os.PathLike, model: torch.nn.Module,
                  low_is_best: bool = True, smoothing_window: int = 1, tag: str = "loss/val",
                  model_name: str | None = None) -> int | None:
    """Load the checkpoint of the epoch with the best validation scalar (default `loss/val`,
    lowest best; the challenge logs it as tag="validation") among the epochs that have a
    checkpoint file; return that epoch, or None when there are no logs or no such checkpoint."""
    files = epoch_files(model_save_path, model_name or "")
    epoch = best_epoch_from_logs(logs_save_path, tag, low_is_best, smoothing_window, among=files)
    if epoch is None:
        return None
    state = read_checkpoint(files[epoch])
    load_weights(model, state, files[epoch])
    return epoch
