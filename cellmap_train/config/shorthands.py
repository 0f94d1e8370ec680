"""Checks on the top-level shorthands and groups that turn a mistyped override into one clear
line before anything runs, and the shorthands typed on the command line carried to where they land."""

from __future__ import annotations

import logging
import math
import numbers

from omegaconf import DictConfig, ListConfig, OmegaConf

from cellmap_train.errors import ConfigError

log = logging.getLogger(__name__)

# shorthand -> (accepted types, predicate, what it must be)
_POSITIVE_INT = ((int,), lambda v: v >= 1, "an integer >= 1")
_SHORTHANDS = {
    "lr": ((numbers.Real,), lambda v: 0 < v < math.inf, "a positive number"),  # inf too trains on NaN
    "batch_size": _POSITIVE_INT,
    "epochs": _POSITIVE_INT,
    "iterations_per_epoch": _POSITIVE_INT,
    "seed": ((int,), lambda v: v >= 0, "an integer >= 0"),
    "split_seed": ((int,), lambda v: v >= 0, "an integer >= 0"),
    "validation_prob": ((numbers.Real,), lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "validation_time_limit": ((numbers.Real, type(None)), lambda v: v is None or v > 0, "null or seconds > 0"),
    "validation_batch_limit": ((int, type(None)), lambda v: v is None or v >= 1, "null or an integer >= 1"),
    "load_model": ((str, type(None)), lambda v: v in (None, "latest", "best"), "latest, best or null"),
    "init_from": ((str, type(None)), lambda v: v is None or v.strip() != "", "a checkpoint file, a run or sweep folder, or null"),
    "freeze": ((ListConfig, type(None)), lambda v: v is None or all(isinstance(x, str) and x for x in v),
               "a list of module paths, e.g. freeze=[down]"),
    "use_s3": ((bool,), lambda v: True, "true or false"),
    "model_kwargs": ((DictConfig, type(None)), lambda v: True, "a mapping of model arguments: set one with +model_kwargs.<name>=value"),
}


# every run instantiates one of each: `~scheduler` (or `scheduler=null`) leaves a hole, not a default
REQUIRED_GROUPS = ("paths", "model", "data", "transforms", "optimizer", "scheduler", "loss", "trainer", "logger")


def group_options(group: str) -> list[str]:
    """The options of a config group, as Hydra lists them for `group=<name>` (empty outside a Hydra run)."""
    from hydra.core.global_hydra import GlobalHydra

    if not GlobalHydra.instance().is_initialized():
        return []
    return GlobalHydra.instance().config_loader().get_group_options(group)


def removed_group_message(group: str) -> str:
    options = group_options(group)
    choose = f"choose one with {group}=<name>" + (f" ({', '.join(options)})" if options else "")
    hint = "; scheduler=none keeps the learning rate constant" if group == "scheduler" else ""
    return f"{group}: removed from the config, but every run needs one: {choose}{hint}"


def check_groups(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first group removed from the config, and what to choose instead."""
    missing = next((group for group in REQUIRED_GROUPS if cfg.get(group) is None), None)
    if missing:
        raise ConfigError(removed_group_message(missing))


def check_shorthands(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first shorthand with a wrong type or value."""
    for key, (types, ok, expected) in _SHORTHANDS.items():
        if key not in cfg:
            continue
        value = cfg[key]
        if isinstance(value, bool) and bool not in types or not isinstance(value, types) or not ok(value):
            raise ConfigError(f"{key}={value!r}: must be {expected}")
    check_class_list("classes", cfg.get("classes"), "nuc,mito")
    if cfg.get("init_from_classes") is not None:  # a weights-only init_from file's output channels
        check_class_list("init_from_classes", cfg.init_from_classes, "nuc,er,mito")


def check_class_list(key: str, classes, example: str) -> None:
    if not isinstance(classes, ListConfig) or not classes or not all(isinstance(c, str) and c for c in classes):
        shown = OmegaConf.to_container(classes) if isinstance(classes, ListConfig) else classes
        raise ConfigError(f"{key}={shown!r}: must be a non-empty list of class names, e.g. {key}=[{example}]")
    twice = next((c for i, c in enumerate(classes) if c in classes[:i]), None)
    if twice is not None:  # two output channels of one class, and its metrics written over each other
        raise ConfigError(f"{key}={list(classes)!r}: {twice!r} is listed twice")


# where a shorthand lands when a preset writes a value there itself (trainer=smoke: `epochs: 1`)
_HOMES = {"epochs": "trainer.epochs", "iterations_per_epoch": "trainer.iterations_per_epoch",
          "seed": "trainer.seed", "lr": "optimizer.lr", "batch_size": "data.batch_size"}


def command_line_overrides() -> list[str]:
    """The run's overrides as typed (empty outside a Hydra run, e.g. a notebook's compose)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def apply_command_line_shorthands(cfg: DictConfig, overrides: list[str]) -> list[str]:
    """A shorthand typed on the command line wins over a preset that sets its home itself
    (`trainer=smoke epochs=5` trains 5 epochs, not the preset's 1, and says so), unless the home
    was typed too. Returns the lines said."""
    typed = {item.split("=", 1)[0].lstrip("+~") for item in overrides if "=" in item}
    lines = []
    for key in sorted(typed & set(_HOMES)):
        home = _HOMES[key]
        preset = OmegaConf.select(cfg, home, throw_on_missing=False)
        if home in typed or preset is None or preset == cfg[key] or _source(cfg, home) == f"${{{key}}}":
            continue
        lines.append(f"{key}={cfg[key]}: used for {home} (the chosen preset set it to {preset}); "
                     f"set {home}=... to choose otherwise")
        OmegaConf.update(cfg, home, cfg[key], merge=False)
    for line in lines:
        log.warning("%s", line)
    return lines


def _source(cfg: DictConfig, key: str):
    """A node's value before interpolation (`${epochs}`, or the literal a preset wrote)."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return node._get_node(leaf)._value() if isinstance(node, DictConfig) else None

