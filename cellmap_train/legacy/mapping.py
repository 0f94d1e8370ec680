"""Map every variable the challenge's `train()` reads to overrides of this project's config."""

from __future__ import annotations

import difflib
from numbers import Real
from pathlib import Path
from typing import Any

from cellmap_train.legacy.fold import Call, LocalDef, PathValue, Ref, first_unknown
from cellmap_train.legacy.machine import settle_machine_values
from cellmap_train.legacy.objects import (custom_model_target, map_criterion, map_custom_model, map_model,
                                          map_model_by_name, map_optimizer, map_scheduler, needs_execution)
from cellmap_train.legacy.plan import Plan
from cellmap_train.legacy.reader import ConfigFile
from cellmap_train.legacy.run_folder import map_run_folder
from cellmap_train.legacy.value_transforms import map_spatial_transforms, map_value_transforms

# what a value must be: (test, words for the error)
NUMBER = (lambda v: isinstance(v, Real) and not isinstance(v, bool), "a number")
INTEGER = (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer")
BOOLEAN = (lambda v: isinstance(v, bool), "True or False")
TEXT = (lambda v: isinstance(v, str), "a string")
PATH = (lambda v: isinstance(v, (str, PathValue)), "a path string")


def optional(kind):
    test, words = kind
    return (lambda v: v is None or test(v), f"None or {words}")


# challenge variable -> (our key, kind)
SIMPLE = {
    "learning_rate": ("lr", NUMBER),
    "batch_size": ("batch_size", INTEGER),
    "epochs": ("epochs", INTEGER),
    "iterations_per_epoch": ("iterations_per_epoch", INTEGER),
    "random_seed": ("seed", INTEGER),
    "validation_prob": ("validation_prob", NUMBER),
    "validation_time_limit": ("validation_time_limit", optional(NUMBER)),
    "validation_batch_limit": ("validation_batch_limit", optional(INTEGER)),
    "device": ("device", optional(TEXT)),
    "use_s3": ("use_s3", BOOLEAN),
    "model_name": ("model_name", TEXT),
    "model_to_load": ("model_to_load", TEXT),
    "model_save_path": ("model_save_path", PATH),
    "logs_save_path": ("logs_save_path", PATH),
    "datasplit_path": ("datasplit_path", PATH),
    "gradient_accumulation_steps": ("trainer.gradient_accumulation_steps", INTEGER),
    "max_grad_norm": ("trainer.max_grad_norm", optional(NUMBER)),
    "weighted_sampler": ("data.weighted_sampler", BOOLEAN),
    "use_mutual_exclusion": ("data.mutual_exclusion", BOOLEAN),
    "smoothing_window": ("trainer.smoothing_window", INTEGER),
    "filter_by_scale": ("data.filter_by_scale", (lambda v: isinstance(v, (bool, Real, list, tuple)), "a bool, a scale or a list of scales")),
}
UNSUPPORTED = {
    "debug_memory": "memory debugging is not supported",
}
# read by the challenge's get_dataloader(config=...) only, never by its train(): reported with what happens here
DATALOADER_ONLY = {
    "random_validation": "validation here always covers the same tiles (a time or batch limit takes the first ones), "
                         "as the challenge's train() passes no random_validation; ignored",
    "train_micro_batch_size_per_gpu": "the challenge's train() uses batch_size; batch_size here is per process "
                                      "(per GPU under torchrun) already: set batch_size to use this value; ignored",
    "kwargs": "extra DataLoader arguments of get_dataloader(config=...); set them with data.dataloader_kwargs.<name>; ignored",
}
# every variable the challenge reads: anything else in the file is a helper and only used for folding
READ = {*SIMPLE, *UNSUPPORTED, *DATALOADER_ONLY, "classes", "input_array_info", "target_array_info", "load_model",
        "model", "model_kwargs", "optimizer", "scheduler", "scheduler_kwargs", "criterion", "criterion_kwargs",
        "weight_loss", "force_all_classes", "dataloader_kwargs", "spatial_transforms", "train_raw_value_transforms",
        "val_raw_value_transforms", "target_value_transforms", "low_is_best", "base_experiment_path"}


def check(plan: Plan, name: str, value: Any, kind) -> Any:
    test, words = kind
    if not test(value):
        shown = f"a string {value!r}" if isinstance(value, str) else f"a call {value.source}" if isinstance(value, Call) else repr(value)
        raise plan.error(name, f"must be {words}, got {shown}")
    return value


def build_plan(config: ConfigFile, allow_exec: bool = False) -> Plan:
    plan = Plan(config, allow_exec=allow_exec)
    values = {k: v for k, v in config.values.items() if k in READ}
    settle_machine_values(plan, values)
    for name, value in values.items():
        unknown = first_unknown(value if not isinstance(value, Call) else [])
        why = needs_execution(value) if isinstance(value, Call) and name != "model" else None
        if unknown is not None or why:
            plan.need_exec(name, f"not known without running the file: {why or unknown.why}")
    if plan.needs_exec:
        return plan
    plan.group("data", "cellmap")  # the challenge always trains on the real data (local or S3)
    map_run_folder(plan, values)
    classes = map_classes(plan, values)
    shape = map_array_info(plan, values)
    for name, (key, kind) in SIMPLE.items():
        if name in values:
            plan.set(key, check(plan, name, values[name], kind))
    map_load_model(plan, values)
    map_model_choice(plan, values, len(classes), shape)
    learning_rate = values.get("learning_rate", 1e-4)
    if "optimizer" in values:
        map_optimizer(plan, values["optimizer"], learning_rate)
    else:  # the challenge's default: RAdam with decoupled weight decay
        plan.set("optimizer.decoupled_weight_decay", True)
    map_scheduler(plan, values.get("scheduler"), dict_of(plan, values, "scheduler_kwargs"))
    map_criterion(plan, values.get("criterion"), dict_of(plan, values, "criterion_kwargs"))
    map_data_options(plan, values)
    map_spatial_transforms(plan, values, shape)
    map_value_transforms(plan, values)
    for name, why in UNSUPPORTED.items():
        if values.get(name):
            plan.note(name, why)
    for name, why in DATALOADER_ONLY.items():
        if name in values:
            plan.note(name, f"read only by the challenge's get_dataloader(config=...), not by its train(): {why}")
    report_helpers(plan)
    return plan


def report_helpers(plan: Plan) -> None:
    """Every other variable of the file, with its line: the challenge's train() never reads it (a
    misspelt setting shows here, with the name it was likely meant to be)."""
    for name, value in plan.config.values.items():
        if name in READ or name.startswith("_") or isinstance(value, (Ref, LocalDef)):
            continue
        close = difflib.get_close_matches(name, sorted(READ), n=1, cutoff=0.8)
        hint = f"; did you mean {close[0]}?" if close else " (a helper of the file)"
        plan.note(name, f"not a setting the challenge's train() reads{hint}")


def dict_of(plan: Plan, values: dict, name: str) -> dict:
    value = values.get(name) or {}
    if not isinstance(value, dict):
        raise plan.error(name, f"must be a dict, got {value!r}")
    return value


def map_classes(plan: Plan, values: dict) -> list:
    if "classes" not in values:
        return ["nuc", "er"]
    classes = values["classes"]
    if not isinstance(classes, (list, tuple)) or not classes or not all(isinstance(c, str) and c for c in classes):
        raise plan.error("classes", f"must be a non-empty list of class names, got {classes!r}")
    plan.set("classes", list(classes))
    return list(classes)


def array_info(plan: Plan, name: str, info: Any) -> dict:
    if isinstance(info, dict) and set(info) != {"shape", "scale"} and info and all(isinstance(v, dict) for v in info.values()):
        if len(info) > 1:  # the challenge's named arrays: {"raw": {...}, "raw_4nm": {...}}
            raise plan.error(name, f"{len(info)} named arrays ({', '.join(map(str, info))}): the models here take "
                                   "one input array and predict one target array; keep one")
        (key, info), = info.items()
        plan.note(name, f"the one named array {key!r} is the {'input' if name.startswith('input') else 'target'}")
    if not isinstance(info, dict) or set(info) != {"shape", "scale"}:
        raise plan.error(name, f"must be a dict with exactly 'shape' and 'scale', got {info!r}")
    shape, scale = info["shape"], info["scale"]
    if not isinstance(shape, (list, tuple)) or len(shape) not in (2, 3) or not all(INTEGER[0](s) and s > 0 for s in shape):
        raise plan.error(name, f"shape must be 2 or 3 positive integers, got {shape!r}")
    if not isinstance(scale, (list, tuple)) or len(scale) not in (2, 3) or not all(NUMBER[0](s) and s > 0 for s in scale):
        raise plan.error(name, f"scale must be 2 or 3 positive numbers, got {scale!r}")
    return {"shape": list(shape), "scale": list(scale)}


def map_array_info(plan: Plan, values: dict) -> list:
    shape = [1, 128, 128]
    for name in ("input_array_info", "target_array_info"):
        if name in values:
            info = array_info(plan, name, values[name])
            plan.set(name, info)
            shape = info["shape"] if name == "input_array_info" else shape
    return shape


def map_load_model(plan: Plan, values: dict) -> None:
    if "load_model" not in values:
        return
    value = check(plan, "load_model", values["load_model"], optional(TEXT))
    plan.set("load_model", value.lower() if value and value.lower() in ("latest", "best") else None)


def map_model_choice(plan: Plan, values: dict, n_classes: int, shape: list) -> None:
    model = values.get("model")
    if model is not None and values.get("model_kwargs"):
        plan.note("model_kwargs", "ignored: the file builds `model` itself (so does the challenge)")
    if model is not None:
        why = needs_execution(model)
        if why and plan.allow_exec and isinstance(model, Call):
            map_custom_model(plan, model, custom_model_target(plan, model, Path(plan.config.path)))
        elif why:
            plan.need_exec("model", why)
        else:
            map_model(plan, model, n_classes, shape)
    elif "model_name" in values or "model_kwargs" in values:
        map_model_by_name(plan, values.get("model_name", "2d_unet"), dict_of(plan, values, "model_kwargs"),
                          n_classes, shape)


def map_data_options(plan: Plan, values: dict) -> None:
    force = values.get("force_all_classes", "validate")  # the challenge's default
    if force not in (True, False, "train", "validate"):
        raise plan.error("force_all_classes", f"must be True, False, 'train' or 'validate', got {force!r}")
    plan.set("data.force_all_classes", force)
    for key, value in dict_of(plan, values, "dataloader_kwargs").items():
        plan.set(f"data.dataloader_kwargs.{key}", value)
    weight_loss = check(plan, "weight_loss", values.get("weight_loss", True), BOOLEAN)  # on unless the file says not
    if weight_loss and "pos_weight" not in dict_of(plan, values, "criterion_kwargs"):
        plan.set("loss.pos_weight", "auto")  # per class background / foreground in the training crops, as the challenge
    if "low_is_best" in values:
        plan.set("trainer.best_metric", "loss/val")  # the challenge ranks epochs by validation loss
        plan.set("trainer.low_is_best", check(plan, "low_is_best", values["low_is_best"], BOOLEAN))
