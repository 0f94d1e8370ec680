"""The challenge's config.py files on this project: translated to Hydra overrides, never run by default.

    from cellmap_train.legacy import overrides, train
    overrides("train_2D.py")   # ['data=cellmap', 'classes=[nuc,er]', ...]
    train(__file__)            # what `csc train train_2D.py` does (for a config's __main__ block)
"""

from __future__ import annotations

import os
import sys

__all__ = ["overrides", "train"]


def overrides(config_path: str | os.PathLike, allow_exec: bool = False) -> list[str]:
    """The Hydra overrides that reproduce a config.py, in order (later ones win)."""
    from cellmap_train.legacy.translate import overrides as translated

    return translated(config_path, allow_exec)


def train(config_path: str | os.PathLike, *extra_overrides: str) -> None:
    """Translate `config_path` and train with it; extra overrides (and the script's own command
    line arguments) come after the file's, so they win. Exits on failure."""
    from cellmap_train.legacy.cli import train as run

    code = run(config_path, *extra_overrides, *sys.argv[1:])
    if code:
        raise SystemExit(code)
