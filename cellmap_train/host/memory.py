"""How much memory this process may use, read the way the kernel will enforce it: what the
machine has available, or less under a cgroup limit (a container, a Slurm job's --mem). A run
that asks for more is stopped by the kernel's OOM killer without a word, minutes after it started;
preflight compares this with what a training step needs at least and says so in one line first."""

from __future__ import annotations

from pathlib import Path

from cellmap_train.host import cgroup
from cellmap_train.host.cgroup import read

_NO_LIMIT = 2**60  # cgroup v1 writes "no limit" as a number near 2**63


def available_bytes(proc: Path | str = "/proc", cgroup_root: Path | str = "/sys/fs/cgroup") -> int | None:
    """The smallest of the machine's MemAvailable and the room left under this process's cgroup
    memory limit (v2 or v1); None where neither can be read (not Linux). Page cache counts as room:
    the kernel drops it before it kills, and a run that has read many chunks must not look full."""
    proc, cgroup_root = Path(proc), Path(cgroup_root)
    found = [value for value in (_meminfo_available(proc), _cgroup_room(proc, cgroup_root)) if value is not None]
    return min(found) if found else None


def _meminfo_available(proc: Path) -> int | None:
    for line in read(proc / "meminfo").splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024  # kB
    return None


def _cgroup_room(proc: Path, root: Path) -> int | None:
    """The least room under the memory limits of this process's cgroup and of every cgroup above it."""
    rooms = []
    for is_v2, level in cgroup.levels("memory", proc, root):
        if is_v2:
            limit, used, stat, cache_key = "memory.max", "memory.current", "memory.stat", "file"
        else:
            limit, used, stat, cache_key = "memory.limit_in_bytes", "memory.usage_in_bytes", "memory.stat", "total_cache"
        room = _room(read(level / limit).strip(), read(level / used).strip(), _stat(level / stat, cache_key))
        if room is not None:
            rooms.append(room)
    return min(rooms) if rooms else None


def _room(limit: str, used: str, cache: int) -> int | None:
    if not limit.isdigit() or not used.isdigit() or int(limit) >= _NO_LIMIT:  # "max", unreadable or unlimited
        return None
    return max(0, int(limit) - max(0, int(used) - cache))


def _stat(path: Path, key: str) -> int:
    for line in read(path).splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0
