"""A run's record, `result.json` in its folder: how it ended, what it measured, where its files
are. One type, one writer, one reader: the job writes it when the run ends; a sweep's summary,
`cellmap-train runs` and `init_from=<run folder>` read it.

Paths in it are relative to the run folder (a moved or copied folder still holds), unless the
file lies outside the folder (`model_save_path` pointing elsewhere)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellmap_train.files import atomic_write

RESULT_FILE = "result.json"
STATUSES = ("ok", "failed", "interrupted", "skipped")  # interrupted: a signal stopped it after a checkpoint


@dataclass
class RunRecord:
    status: str = "ok"
    error: str | None = None  # the one line it ended with (also a stop's line)
    config_error: bool = False  # stopped by its config before training: `runs` lists it only with --all
    best_metric_name: str | None = None
    low_is_best: bool | None = None
    classes: list[str] | None = None  # a mean Dice over [nuc, er] and one over [mito] are not the same score
    best_metric: float | None = None
    best_epoch: int | None = None
    final_metric: float | None = None
    final_loss_val: float | None = None
    epochs_done: int = 0
    steps: int = 0
    wall_time_s: float = 0.0  # the whole run, over all the processes that trained it
    checkpoint: str | None = None
    best_checkpoint: str | None = None
    datasplit: str | None = None
    datasplit_digest: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # fields this version does not know, kept as read

    def as_dict(self) -> dict[str, Any]:
        """The record as result.json holds it (and a row of a sweep's summary)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**self.extra, **fields}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunRecord":
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in values.items() if k in known},
                   extra={k: v for k, v in values.items() if k not in known})

    def write(self, run_dir: str | os.PathLike) -> Path:
        return write_record(run_dir, self.as_dict())


def write_record(run_dir: str | os.PathLike, record: RunRecord | dict[str, Any]) -> Path:
    """Atomically write a run's record (NaN/inf become null so the file is strict JSON)."""
    values = record.as_dict() if isinstance(record, RunRecord) else record
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}
    path = Path(run_dir) / RESULT_FILE
    with atomic_write(path) as handle:
        handle.write(json.dumps(clean, indent=2, default=str) + "\n")
    return path


def read_record(run_dir: str | os.PathLike) -> RunRecord:
    """A run's record; OSError or ValueError (also for JSON that is not an object) when unreadable."""
    values = json.loads((Path(run_dir) / RESULT_FILE).read_text())
    if not isinstance(values, dict):
        raise ValueError(f"holds a {type(values).__name__}, not a run record")
    return RunRecord.from_dict(values)


def has_record(run_dir: str | os.PathLike) -> bool:
    return (Path(run_dir) / RESULT_FILE).is_file()


def relative_to_run(path: str | os.PathLike | None, run_dir: str | os.PathLike | None) -> str | None:
    """A path inside the run folder as relative to it; one outside it as it is."""
    if path is None or run_dir is None:
        return None if path is None else str(path)
    try:
        return str(Path(path).resolve().relative_to(Path(run_dir).resolve()))
    except ValueError:
        return str(path)
