"""Where the config tree lives and where a run's paths point: the only part of config/ that
legacy/ imports (it translates config.py files into overrides of this tree)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

CONFIG_NAME = "config"
RUN_STAMP_ENV = "CELLMAP_TRAIN_RUN_STAMP"  # set by the entry point so all DDP ranks share one run folder


def config_dir() -> str:
    """conf/ of the checkout when running from one, else the copy shipped in the wheel. Whoever
    asks is about to compose it, so the resolvers it uses are registered here."""
    from cellmap_train.config.resolvers import register_resolvers

    register_resolvers()
    checkout = Path(__file__).resolve().parents[2] / "conf"
    return str(checkout) if (checkout / f"{CONFIG_NAME}.yaml").is_file() else "pkg://cellmap_train.conf"


def run_path(cfg: DictConfig, path: str) -> str:
    """Paths in the config are relative to the run folder unless absolute."""
    return str(Path(cfg.paths.output_dir) / str(path).format(model_name=cfg.model_name))
