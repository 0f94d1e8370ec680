"""Settings changed between a checkpoint and the run that resumes from it.

A checkpoint's optimizer state holds the learning rate it was trained with, so loading it would
replace the `lr` of the new command without a word (while the run's logged hyper-parameters say
the new one). How a change is known: the run's resolved config (saved in every checkpoint) says
which `lr` the checkpoint's run was started with; when this run's config says another, the user
changed it, and it becomes the new base rate. Without a config on either side (a notebook's
`fit(..., config=None)`) nothing is known to have changed, and the checkpoint's state is used.
"""

from __future__ import annotations

import math

SCALED_GROUP_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")  # OneCycleLR keeps its range in the groups


def changed_on_resume(saved: dict, config: dict | None, optimizer, scheduler, batch_size: int | None) -> list[str]:
    """One line per changed setting (lr, batch_size), saying which value is used; applies a changed lr."""
    before = saved.get("config") or {}
    now = config or {}
    lines = []
    old_lr, new_lr = before.get("lr"), now.get("lr")
    if _numbers(old_lr, new_lr) and float(old_lr) != float(new_lr):
        set_base_lr(optimizer, scheduler, float(new_lr), float(old_lr))
        lines.append(f"lr={new_lr:g} (the checkpoint was trained with lr={old_lr:g}): {new_lr:g} is used as the new "
                     f"base rate, the schedule continues from where it was")
    old_batch = saved.get("batch_size", before.get("batch_size"))
    if _numbers(old_batch, batch_size) and int(old_batch) != int(batch_size):
        lines.append(f"batch_size={batch_size} (the checkpoint was trained with batch_size={old_batch}): "
                     f"{batch_size} is used from here on")
    return lines


def set_base_lr(optimizer, scheduler, new: float, old: float) -> None:
    """Make `new` the base rate where `old` was: every rate of the optimizer's groups and the
    scheduler's base rates scaled by new/old, so the schedule keeps its position (a warm-up half
    done stays half done, a decay so far is kept) at the new height."""
    def scaled(value: float) -> float:
        return value * new / old if old else new

    for group in optimizer.param_groups:
        for key in SCALED_GROUP_KEYS:
            if key in group and not (key == "min_lr" and not old):
                group[key] = scaled(group[key])
    for name in ("base_lrs", "_last_lr"):
        if isinstance(getattr(scheduler, name, None), list):
            setattr(scheduler, name, [scaled(value) for value in getattr(scheduler, name)])


def _numbers(*values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
