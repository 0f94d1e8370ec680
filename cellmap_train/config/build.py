"""Build the model from its config node: `model_kwargs` merged over the group's arguments, and
arguments the class does not take reported in one line before anything is constructed."""

from __future__ import annotations

import inspect

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from cellmap_train.errors import ConfigError, UserError


def model_class(target: str):
    try:
        return get_object(target)
    except Exception as err:  # ImportError, AttributeError, ... from the user's module
        cause = err.__cause__ or err
        reason = " ".join(str(cause).split()) or type(cause).__name__
        raise ConfigError(f"model._target_={target}: cannot import it ({reason}); is its package on PYTHONPATH?") from err


def check_arguments(target: str, cls, arguments: list[str]) -> None:
    """Name every argument the constructor does not accept (unless it takes **kwargs)."""
    try:
        parameters = inspect.signature(cls).parameters
    except (TypeError, ValueError):  # no introspectable signature: let the call decide
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = [name for name in arguments if name not in parameters]
    if unknown:
        accepted = [name for name, p in parameters.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
        raise ConfigError(f"model: {target} has no argument {', '.join(map(repr, unknown))} (from model.<name> or "
                          f"model_kwargs); it takes {', '.join(accepted)}")


def build_model(model_cfg: DictConfig, model_kwargs: DictConfig | dict | None = None) -> nn.Module:
    """Instantiate `model_cfg` with `model_kwargs` (the challenge's variable) overriding its arguments."""
    if OmegaConf.is_missing(model_cfg, "_target_"):
        raise ConfigError("model._target_ is not set: name your class, e.g. model._target_=my_pkg.MyNet")
    with open_dict(model_cfg):  # model_kwargs may add arguments the group does not list
        merged = OmegaConf.merge(model_cfg, model_kwargs or {})
    target = str(merged._target_)
    check_arguments(target, model_class(target), [k for k in merged if not str(k).startswith("_")])
    try:
        return instantiate(merged)
    except InstantiationException as err:
        if isinstance(err.__cause__, UserError):  # the constructor's own one-line message, unwrapped
            raise err.__cause__ from None
        raise


def freeze_parameters(model: nn.Module, prefixes: list[str] | None) -> str | None:
    """Keep the parameters under each module path in `prefixes` fixed (`freeze=[down]`: a U-Net's
    encoder); returns the line that says how much that is. A prefix that names no parameter is an
    error listing the model's top-level parts. Batch norms in a frozen part stay in eval mode: they
    normalise with the running statistics they were trained with and no longer update them, so the
    frozen part computes what it computed before (in train mode both would drift with each batch)."""
    if not prefixes:
        return None
    named = dict(model.named_parameters())

    def under(name: str, prefix: str) -> bool:
        return name == prefix or name.startswith(f"{prefix}.")

    for prefix in prefixes:
        if not any(under(name, prefix) for name in named):
            parts = ", ".join([name for name, child in model.named_children() if next(child.parameters(), None) is not None]
                              + [name for name, _ in model.named_parameters(recurse=False)])
            raise ConfigError(f"freeze: {prefix!r} names no parameters of {type(model).__name__}; "
                              f"its parts with parameters are {parts}")
    frozen = [p for name, p in named.items() if any(under(name, prefix) for prefix in prefixes)]
    if len(frozen) == len(named):
        raise ConfigError(f"freeze={list(prefixes)} leaves nothing to train: all {len(named)} parameter tensors "
                          f"of {type(model).__name__} are under it")
    for parameter in frozen:
        parameter.requires_grad_(False)
    norms = [module for name, module in model.named_modules()
             if isinstance(module, nn.modules.batchnorm._BatchNorm) and any(under(name, prefix) for prefix in prefixes)]
    for norm in norms:
        norm.register_forward_pre_hook(_in_eval_mode)
    total = sum(p.numel() for p in named.values())
    count = sum(p.numel() for p in frozen)
    held = f"; its {len(norms)} batch norms keep their running statistics" if norms else ""
    return f"Frozen: {', '.join(prefixes)} ({len(frozen)} tensors, {count:,} of {total:,} parameters{held}); the rest trains."


def _in_eval_mode(module: nn.Module, _inputs) -> None:
    """A frozen batch norm's forward pre-hook: whatever model.train() set, normalise as in eval."""
    module.training = False
