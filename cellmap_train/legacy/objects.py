"""Map the objects a config.py builds (model, optimizer, scheduler, criterion) to config groups."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cellmap_train.legacy.fold import Call, LocalDef, Member, Ref, first_unknown, is_plain
from cellmap_train.legacy.plan import Override, Plan, plain
from cellmap_train.legacy.reader import Note

OPTIMIZER_GROUPS = {"Adam": "adam", "AdamW": "adamw", "RAdam": "radam", "SGD": "sgd"}
TORCH_DEFAULT_LR = {"Adam": 1e-3, "AdamW": 1e-3, "RAdam": 1e-3, "SGD": 1e-3}
SCHEDULER_GROUPS = {"CosineAnnealingLR": "cosine", "StepLR": "step", "OneCycleLR": "onecycle"}
NORMS = {"InstanceNorm2d": "instance", "InstanceNorm3d": "instance", "BatchNorm2d": "batch", "BatchNorm3d": "batch"}
RESNET_KWARGS = {"input_nc": "in_channels", "output_nc": "out_channels", "ngf": "ngf", "n_blocks": "n_blocks",
                 "n_downsampling": "n_downsampling", "padding_type": "padding_mode"}
VIT_KWARGS = {"img_size": "img_size"}
CHALLENGE_UNET_3D_FEATURES = 64  # the challenge's UNet_3D width; ours defaults to 32


def callee(value: Any) -> str:
    """The name a Call/Ref is known by, e.g. 'UNet_2D' or 'torch.optim.AdamW'."""
    func = value.func if isinstance(value, Call) else value
    return func.path if isinstance(func, Ref) else getattr(func, "name", type(func).__name__)


def needs_execution(value: Any) -> str | None:
    """Why an object can only be known by running the file (or None)."""
    func = value.func if isinstance(value, Call) else value
    if isinstance(func, LocalDef):
        return f"{func.name} is defined in the config file"
    if isinstance(func, Ref) and func.local:
        return f"{func.path} is imported from a local module"
    return None


def bind_args(call: Call, names: list[str]) -> dict:
    """Positional arguments of a call, named by the constructor's signature."""
    return {**dict(zip(names, call.args)), **call.kwargs}


# ---- model -------------------------------------------------------------------------------

def map_model(plan: Plan, value: Any, n_classes: int, shape: list | None) -> None:
    name = callee(value).rsplit(".", 1)[-1]
    if not isinstance(value, Call):
        raise plan.error("model", f"expected a model constructor call, got {callee(value)}")
    if name in ("UNet_2D", "UNet_3D"):
        map_unet(plan, "2d" if name == "UNet_2D" else "3d", bind_args(value, ["n_channels", "n_classes", "trilinear"]),
                 n_classes)
    elif name == "ResNet":
        args = bind_args(value, ["ndims"])
        map_resnet(plan, args, n_classes)
    elif name == "ViTVNet":
        map_vitnet(plan, bind_args(value, ["out_channels", "config", "img_size", "vis"]), n_classes, shape)
    else:
        map_custom_model(plan, value)


def map_model_by_name(plan: Plan, model_name: str, kwargs: dict, n_classes: int, shape: list | None) -> None:
    """The challenge's choice when `model` is not given: substrings of model_name."""
    lowered = model_name.lower()
    dims = "2d" if "2d" in lowered else "3d" if "3d" in lowered else None
    if dims and "unet" in lowered:
        map_unet(plan, dims, {"n_classes": n_classes, **kwargs}, n_classes)
    elif dims and "resnet" in lowered:
        map_resnet(plan, {"ndims": int(dims[0]), "output_nc": n_classes, **kwargs}, n_classes)
    elif "vitnet" in lowered:
        map_vitnet(plan, {"out_channels": n_classes, **kwargs}, n_classes, shape)
    else:  # a config for another trainer: everything else still translates
        plan.group("model", "custom")
        if kwargs:
            plan.set("model_kwargs", kwargs)
        why = (f"{model_name!r} is no model the challenge builds (2d/3d unet or resnet, vitnet) and the file builds none; "
               "add model=custom model._target_=<package.Class> (your network, importable; it is given in_channels, "
               f"out_channels{' and model_kwargs' if kwargs else ''})")
        plan.note("model_name", why)
        plan.unmapped_model = Note(plan.config.lines.get("model_name", 0), "model_name", why)


def set_channels(plan: Plan, args: dict, in_key: str, out_key: str, n_classes: int) -> None:
    if args.get(in_key, 1) != 1:
        plan.set("model.in_channels", args[in_key])
    if out_key in args and args[out_key] != n_classes:
        plan.set("model.out_channels", args[out_key])
        plan.note("model", f"{out_key}={args[out_key]} differs from len(classes)={n_classes}")


def map_unet(plan: Plan, dims: str, args: dict, n_classes: int) -> None:
    plan.group("model", f"{dims}_unet")
    set_channels(plan, args, "n_channels", "n_classes", n_classes)
    if dims == "3d":
        plan.set("model.base_features", CHALLENGE_UNET_3D_FEATURES)
    if args.get("trilinear"):
        plan.set("model.upsample", "bilinear" if dims == "2d" else "trilinear")
    report_extra(plan, args, {"n_channels", "n_classes", "trilinear"})


def map_resnet(plan: Plan, args: dict, n_classes: int) -> None:
    if args.get("ndims") not in (2, 3):
        raise plan.error("model", f"ResNet ndims must be 2 or 3, got {args.get('ndims')!r}")
    plan.group("model", f"{args['ndims']}d_resnet")
    set_channels(plan, args, "input_nc", "output_nc", n_classes)
    if "output_nc" not in args:
        plan.note("model", "ResNet without output_nc has ngf output channels in the challenge; using len(classes)")
    for key, ours in RESNET_KWARGS.items():
        if key in args and key not in ("input_nc", "output_nc"):
            plan.set(f"model.{ours}", args[key])
    if "norm_layer" in args:
        norm = callee(args["norm_layer"]).rsplit(".", 1)[-1]
        plan.set("model.norm", NORMS[norm]) if norm in NORMS else plan.note("model", f"norm_layer {norm} has no equivalent")
    if args.get("use_dropout"):
        plan.set("model.dropout", 0.5)  # the pix2pix generator's dropout rate
    if "activation" in args and callee(args["activation"]).rsplit(".", 1)[-1] != "ReLU":
        plan.note("model", f"activation {callee(args['activation'])} is not supported; ReLU is used")
    report_extra(plan, args, {"ndims", "norm_layer", "use_dropout", "activation", *RESNET_KWARGS})


def map_vitnet(plan: Plan, args: dict, n_classes: int, shape: list | None) -> None:
    plan.group("model", "vitnet")
    set_channels(plan, args, "in_channels", "out_channels", n_classes)
    img_size = args.get("img_size")
    if img_size is not None and list(img_size) != list(shape or []):
        plan.set("model.img_size", img_size)
    if args.get("config", "ViT-V-Net") != "ViT-V-Net":
        plan.note("model", f"ViTVNet config {args['config']!r} is not supported; the ViT-V-Net sizes are used")
    report_extra(plan, args, {"out_channels", "config", "img_size", "vis"})


def report_extra(plan: Plan, args: dict, known: set) -> None:
    for key in args:
        if key not in known:
            plan.note("model", f"argument {key}={args[key]!r} has no equivalent; ignored")


def map_custom_model(plan: Plan, call: Call, target: str | None = None) -> None:
    """Any other importable class: model=custom with its _target_ and arguments."""
    if first_unknown([call.args, call.kwargs]) is not None or not is_plain([call.args, call.kwargs]):
        plan.need_exec("model", f"arguments of {call.source} are not constants")
        return
    plan.group("model", "custom")
    plan.set("model._target_", target or callee(call))
    for key in ("in_channels", "out_channels"):
        if key not in call.kwargs:
            plan.delete(f"model.{key}")
    if call.args:
        plan.overrides.append(_add("model._args_", call.args))
    for key, value in call.kwargs.items():
        plan.overrides.append(_add(f"model.{key}", value) if key not in ("in_channels", "out_channels")
                              else _set(f"model.{key}", value))


def _add(key: str, value: Any) -> Override:
    return Override(key, plain(value), "add")


def _set(key: str, value: Any) -> Override:
    return Override(key, plain(value))


def custom_model_target(plan: Plan, call: Call, config_path: Path) -> str:
    """With --allow-exec: the dotted name Hydra imports a file-defined or local class by."""
    func = call.func
    plan.python_path.append(str(config_path.resolve().parent))
    return f"{config_path.stem}.{func.name}" if isinstance(func, LocalDef) else func.path


# ---- optimizer, scheduler, loss ----------------------------------------------------------

def map_optimizer(plan: Plan, value: Any, learning_rate: Any) -> None:
    name = callee(value).rsplit(".", 1)[-1]
    group = OPTIMIZER_GROUPS.get(name) if callee(value).startswith("torch.optim") else None
    target = callee(value)
    if group:
        plan.group("optimizer", group)
    else:
        plan.delete("optimizer")
        for key, item in (("_target_", target), ("_partial_", True), ("lr", "${lr}")):
            plan.overrides.append(_add(f"optimizer.{key}", item))
    if not isinstance(value, Call):  # a class: the challenge calls it with lr=learning_rate
        return
    args = bind_args(value, ["params", "lr"])
    params = args.pop("params", None)
    if not (isinstance(params, Call) and isinstance(params.func, Member) and params.func.attr == "parameters"):
        plan.note("optimizer", "first argument is not model.parameters(); all model parameters are optimized")
    lr = args.pop("lr", TORCH_DEFAULT_LR.get(name))
    if lr is not None and lr != learning_rate:
        plan.set("lr", lr)
    for key, item in args.items():
        plan.set(f"optimizer.{key}", item) if group else plan.overrides.append(_add(f"optimizer.{key}", item))


def map_scheduler(plan: Plan, value: Any, kwargs: dict) -> None:
    if value is None:
        return
    name = callee(value).rsplit(".", 1)[-1]
    group = SCHEDULER_GROUPS.get(name) if callee(value).startswith("torch.optim") else None
    if isinstance(value, Call) and kwargs:  # the challenge passes scheduler_kwargs to a class only
        plan.note("scheduler_kwargs", "ignored: the file builds the scheduler itself (so does the challenge)")
    args = bind_args(value, ["optimizer"]) if isinstance(value, Call) else dict(kwargs)
    args.pop("optimizer", None)
    if group:
        plan.group("scheduler", group)
        for key, item in args.items():
            plan.set(f"scheduler.{key}", item)
    else:
        plan.delete("scheduler")
        for key, item in {"_target_": callee(value), "_partial_": True, **args}.items():
            plan.overrides.append(_add(f"scheduler.{key}", item))
    plan.set("trainer.scheduler_interval", "epoch")  # the challenge steps every scheduler once per epoch


def map_criterion(plan: Plan, value: Any, kwargs: dict) -> None:
    name = callee(value).rsplit(".", 1)[-1] if value is not None else "BCEWithLogitsLoss"
    if name != "BCEWithLogitsLoss":
        plan.note("criterion", f"{callee(value)} has no masked equivalent; loss=bce (masked BCE) is used")
        return
    plan.group("loss", "bce")
    for key, item in kwargs.items():
        if key == "pos_weight":
            plan.set("loss.pos_weight", item)
        else:
            plan.note("criterion_kwargs", f"{key} is not an option of the masked BCE loss; ignored")
