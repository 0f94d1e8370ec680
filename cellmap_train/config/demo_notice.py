"""One line for a run that trains on the built-in demo data because nothing else was chosen
(`data` is `demo` by default): a new user should not take its Dice for their data's."""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from cellmap_train.host.torchrun import is_rank_zero


def say_demo_data_by_default() -> None:
    """Printed by the run (rank 0) once its checks passed, so a config error stays one line."""
    if HydraConfig.initialized() and is_rank_zero():
        notice = demo_notice(HydraConfig.get())
        if notice:
            print(notice, flush=True)


def demo_notice(hydra: DictConfig) -> str | None:
    """The line, from the run's Hydra config, when `data=demo` is in effect by default; None when
    `data=...` or `experiment=demo` is on the command line, and in a sweep's jobs after the first."""
    if hydra.runtime.choices.get("data") != "demo" or hydra.runtime.choices.get("experiment") == "demo":
        return None
    if any(_override_key(override) == "data" for override in hydra.overrides.task):
        return None
    if hydra.mode == RunMode.MULTIRUN and int(hydra.job.get("num", 0) or 0) != 0:
        return None
    return ("Data: the built-in synthetic demo (data=demo, the default); for real data add data=cellmap "
            "paths.data_dir=<your datasets folder>, or data=cellmap_s3 to stream the public CellMap bucket.")


def _override_key(override: str) -> str:
    """`data=demo`, `+data=demo`, `~data`, `data@x=demo` -> data."""
    return override.split("=", 1)[0].lstrip("+~").split("@", 1)[0]
