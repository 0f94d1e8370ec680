"""A run folder's history across processes. Hydra writes `.hydra/` (config.yaml, hydra.yaml,
overrides.yaml) each time a run starts in a folder, so resuming (`load_model=latest`, `csc train`
again, a continued sweep) would replace the record of the first command by the resume's. Before
Hydra writes, the earlier `.hydra/` is moved aside to `.hydra.1/`, `.hydra.2/`, ... in the order
the processes ran: `.hydra/` is always the latest."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cellmap_train.files import RunWriteError, write_error
from cellmap_train.host.torchrun import is_rank_zero

SUBDIR = ".hydra"


def earlier_configs(run_dir: str | os.PathLike) -> list[Path]:
    """The `.hydra.<n>` folders of the processes before the latest, oldest first."""
    found = [p for p in Path(run_dir).glob(f"{SUBDIR}.*") if p.is_dir() and p.suffix[1:].isdigit()]
    return sorted(found, key=lambda p: int(p.suffix[1:]))


def keep_earlier_configs(run_dir: str | os.PathLike) -> Path | None:
    """Move `<run_dir>/.hydra` to the next `.hydra.<n>`; the folder it went to, or None when
    there was none (a new run)."""
    current = Path(run_dir) / SUBDIR
    if not current.is_dir():
        return None
    kept = earlier_configs(run_dir)
    target = Path(run_dir) / f"{SUBDIR}.{int(kept[-1].suffix[1:]) + 1 if kept else 1}"
    try:
        current.rename(target)
    except OSError as err:  # a read-only folder: the run's own write error comes next and says so
        raise RunWriteError(write_error(current, err, "cannot keep the earlier config")) from None
    return target


class KeepEarlierConfigs(Callback):
    """Hydra callback: before a run (or a sweep's jobs) writes `.hydra/` in a folder that has one,
    keep the earlier one. Listed after RunLock, so only the folder's holder moves anything."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if is_rank_zero() and config.hydra.output_subdir == SUBDIR:
            _keep_quietly(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """A continued sweep writes each job's `.hydra/` again (before its own callbacks run)."""
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if config.hydra.output_subdir == SUBDIR and sweep_dir.is_dir():
            for job_dir in sweep_dir.iterdir():
                if job_dir.is_dir() and (job_dir / SUBDIR).is_dir():
                    _keep_quietly(job_dir)


def _keep_quietly(run_dir: Any) -> None:
    try:
        keep_earlier_configs(str(run_dir))
    except RunWriteError:  # Hydra's own write of .hydra/ fails next, with the run's one line
        pass
