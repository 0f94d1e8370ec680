"""This process's cgroups, read the way the kernel applies them: a limit on the process's own
cgroup or on any cgroup above it counts (Slurm puts a job's --mem and --cpus-per-task on the
job's cgroup, not on the task's one the process runs in)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


def levels(controller: str, proc: Path, root: Path) -> Iterator[tuple[bool, Path]]:
    """(is_v2, folder) for the process's cgroup and every one above it, up to the mount, for the
    cgroup v2 hierarchy or the v1 hierarchy that holds `controller` (e.g. "memory", "cpu")."""
    for line in read(proc / "self" / "cgroup").splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: one hierarchy for every controller
            is_v2, mount = True, root
        elif controller in controllers.split(","):  # v1: the controller's own hierarchy
            is_v2, mount = False, root / controllers
            if not mount.is_dir():  # mounted under one of its names only ("cpu" for "cpu,cpuacct")
                mount = root / controller
        else:
            continue
        folder = mount / path.strip("/")
        for level in [folder, *folder.parents]:
            yield is_v2, level
            if level == mount:
                break


def read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
