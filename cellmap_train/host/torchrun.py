"""What torchrun tells a process through its environment, readable without importing torch:
the entry point asks before torch loads (see train.py), the engine asks when it joins the group."""

from __future__ import annotations

import os


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_rank_zero() -> bool:
    """True outside torchrun and on its rank 0 (torchrun sets RANK)."""
    return not launched_by_torchrun() or int(os.environ.get("RANK", "0")) == 0
