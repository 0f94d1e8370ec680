"""One datasplit per sweep: a seed sweep compares like with like.

The datasplit is drawn with `split_seed` (default fixed), not with `seed`, so `seed=1,2,3` varies
the initialisation and the sampling but never the validation set. In a --multirun the default
`datasplit_path` resolves to one file in the sweep folder that every job with the same split
settings shares: its name carries a digest of those settings (classes, validation_prob,
split_seed, where the crops are and how they are filtered), so a sweep over `classes` still gets
one split per class set. Jobs that run side by side (the joblib launcher) may both write it: the
split is deterministic and written atomically, so either write leaves the same complete file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

# what decides a datasplit's rows: the job settings hashed into the shared file's name
SPLIT_SETTINGS = ("classes", "data.validation_prob", "data.split_seed", "data.search_path", "data.force_all_classes",
                  "data.filter_by_scale", "data.make_demo")


def split_key(root: DictConfig) -> str:
    """A short digest of the settings that decide the datasplit's rows."""
    settings = {}
    for key in SPLIT_SETTINGS:
        value = OmegaConf.select(root, key, default=None, throw_on_missing=False)
        settings[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    if settings["data.filter_by_scale"]:  # the scale it filters by is the target's
        scale = OmegaConf.select(root, "target_array_info.scale", default=None, throw_on_missing=False)
        settings["scale"] = OmegaConf.to_container(scale, resolve=True) if OmegaConf.is_config(scale) else scale
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def shared_datasplit(name: str, _root_: DictConfig) -> str:
    """`${sweep_datasplit:datasplit.csv}`: `name` (in the run folder) in a single run; in a
    --multirun, `<sweep folder>/<stem>-<split key>.csv` (absolute, so it holds from any job), unless
    the job's own folder already holds `name` (a job of an older sweep being continued keeps its split)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return name
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return name
    if (Path(hydra_cfg.runtime.output_dir) / name).exists():
        return name
    sweep_dir = Path(hydra_cfg.runtime.cwd) / str(hydra_cfg.sweep.dir)
    path = Path(name)
    return str(sweep_dir / f"{path.stem}-{split_key(_root_)}{path.suffix}")


def register() -> None:
    if not OmegaConf.has_resolver("sweep_datasplit"):
        OmegaConf.register_new_resolver("sweep_datasplit", shared_datasplit)


def digest(path: str | Path) -> str | None:
    """The first 12 hex digits of the file's SHA-256 (None if it cannot be read): which split a run used."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
    except OSError:
        return None
