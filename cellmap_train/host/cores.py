"""How many CPU cores this process may use: the ones its affinity allows (taskset, a Slurm task
bound to --cpus-per-task), or fewer under a cgroup CPU quota (docker --cpus, a Kubernetes limit).
os.cpu_count() counts the whole machine, so on a 64-core node with 8 cores for the job it would
give 4 parallel jobs 16 threads each, 8x more than the cores they share."""

from __future__ import annotations

import os
from pathlib import Path

from cellmap_train.host import cgroup
from cellmap_train.host.cgroup import read


def usable_cores(proc: Path | str = "/proc", cgroup_root: Path | str = "/sys/fs/cgroup") -> int:
    """At least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota(Path(proc), Path(cgroup_root))
    return max(1, min(cores, quota) if quota is not None else cores)


def _cgroup_quota(proc: Path, root: Path) -> int | None:
    """Whole cores of the tightest CPU quota over the process's cgroup and those above it."""
    quotas = []
    for is_v2, level in cgroup.levels("cpu", proc, root):
        if is_v2:  # cpu.max: "<quota> <period>" or "max <period>"
            quota, _, period = read(level / "cpu.max").strip().partition(" ")
        else:  # -1: no quota
            quota, period = read(level / "cpu.cfs_quota_us").strip(), read(level / "cpu.cfs_period_us").strip()
        if quota.isdigit() and period.isdigit() and int(period) > 0:
            quotas.append(int(quota) // int(period))
    return min(quotas) if quotas else None
