"""Where `csc train CONFIG.py` trains: a stable folder, as the challenge's command does.

The challenge runs in the config file's folder and puts checkpoints, TensorBoard logs and the
datasplit under `base_experiment_path` (default: that folder), so running the command again
resumes from the latest checkpoint. The translation sets `hydra.run.dir` to that folder; a
relative path the file names is the challenge's, taken from the config's folder.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from cellmap_train.legacy.fold import PathValue
from cellmap_train.legacy.plan import Plan

PATH_VARIABLES = ("model_save_path", "logs_save_path", "datasplit_path")


def map_run_folder(plan: Plan, values: dict) -> None:
    """`hydra.run.dir` = base_experiment_path (relative to the config's folder) or the config's
    folder; file paths relative to the config's folder are made absolute when the two differ."""
    config_dir = Path(os.path.abspath(plan.config.path)).parent
    base = values.get("base_experiment_path")
    if base is None:
        folder, plan.run_folder_origin = config_dir, "the config file's folder"
    else:
        text = base.text if isinstance(base, PathValue) else base
        if not isinstance(text, str) or not text:
            raise plan.error("base_experiment_path", f"must be a folder path, got {base!r}")
        if "://" in text:
            raise plan.error("base_experiment_path", f"{text}: a run folder must be local (checkpoints and logs are "
                                                     "written there); name a local folder")
        folder = Path(os.path.normpath(config_dir / text))
        plan.run_folder_origin = "base_experiment_path"
        for name in PATH_VARIABLES:
            value = values.get(name)
            path = value.text if isinstance(value, PathValue) else value
            if isinstance(path, str) and "://" not in path and not posixpath.isabs(path):
                values[name] = os.path.normpath(config_dir / path)  # the challenge's working folder is the config's
                plan.note(name, f"relative to the config file's folder, as the challenge runs there: {values[name]}")
    plan.run_folder = str(folder)
    plan.set("hydra.run.dir", str(folder))
