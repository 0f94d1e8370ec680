"""The OmegaConf resolvers conf/ uses, registered when this module is imported (by every entry
that composes the config): ${len:...}, ${run_stamp:fmt}, ${threads_per_job:}, ${if:...},
${sweep_datasplit:...}."""

from __future__ import annotations

import os
from datetime import datetime

from omegaconf import OmegaConf

from cellmap_train.config.location import RUN_STAMP_ENV
from cellmap_train.host.cores import usable_cores
from cellmap_train.run import sweep_split


def run_stamp(fmt: str) -> str:
    shared = os.environ.get(RUN_STAMP_ENV)
    return (datetime.fromisoformat(shared) if shared else datetime.now()).strftime(fmt)


def _joblib_jobs() -> int | None:
    """How many jobs the joblib launcher (`hydra/launcher=parallel`) running this one runs side by
    side on this machine, at most one per core; None under any other launcher or in a single run."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    launcher = HydraConfig.get().launcher
    if "joblib" not in str(launcher.get("_target_", "")).lower():
        return None
    cores = usable_cores()
    n_jobs = int(launcher.get("n_jobs") or 1)
    side_by_side = cores + 1 + n_jobs if n_jobs < 0 else n_jobs  # joblib's -1 = every core, -2 = all but one
    return min(max(side_by_side, 1), cores)


def jobs_side_by_side() -> int:
    """Jobs of this --multirun sharing the machine's cores and memory with this one, itself included."""
    return _joblib_jobs() or 1


def threads_per_job() -> int | None:
    """torch threads for one job of a joblib launcher: the cores shared out among the jobs it runs
    side by side, so 4 jobs on 16 cores take 4 threads each instead of 16 each; None (torch's
    default: every core) for any other launcher."""
    jobs = _joblib_jobs()
    return None if jobs is None else max(1, usable_cores() // jobs)


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("len"):
        OmegaConf.register_new_resolver("len", lambda items: len(items))
    if not OmegaConf.has_resolver("run_stamp"):  # like ${now:fmt}, but one time for every DDP rank
        OmegaConf.register_new_resolver("run_stamp", run_stamp, use_cache=True)
    if not OmegaConf.has_resolver("threads_per_job"):
        OmegaConf.register_new_resolver("threads_per_job", threads_per_job)
    if not OmegaConf.has_resolver("if"):  # ${if:${use_s3},a,b}: pick by a boolean shorthand
        OmegaConf.register_new_resolver("if", lambda condition, then, otherwise: then if condition else otherwise)
    sweep_split.register()  # ${sweep_datasplit:datasplit.csv}: one datasplit shared by a sweep's jobs


register_resolvers()
