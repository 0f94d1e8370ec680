"""Map a config.py's transforms: `spatial_transforms` to `transforms.train.spatial`, the raw value
transforms to the normaliser (`transforms.<set>.raw`) and the intensity augmentations
(`transforms=intensity`), a target `Binarize` to its threshold. Each step that has no
equivalent is reported; none is dropped without a line."""

from __future__ import annotations

import math
from typing import Any

from cellmap_train.legacy.fold import Call, Ref
from cellmap_train.legacy.objects import bind_args, callee
from cellmap_train.legacy.plan import Plan

SPATIAL_AXES = "zyx"
RAW_MAX = 255.0  # CellMap raw is uint8 (fibsem-uint8): ToDtype(scale=True) divides by this
NORMALISER = "cellmap_train.data.transforms.NormalizeRaw"
INTENSITY_STEPS = ("gamma", "contrast", "blur", "noise")
NO_OP = {"NaNtoNum"}  # ours: raw is never NaN


def map_spatial_transforms(plan: Plan, values: dict, shape: list) -> None:
    if "spatial_transforms" not in values:
        return
    spec = values["spatial_transforms"]
    if spec is None or spec == {}:
        plan.set("transforms.train.spatial", None)
        return
    if not isinstance(spec, dict) or set(spec) - {"mirror", "transpose", "rotate"}:
        raise plan.error("spatial_transforms", f"must be a dict of mirror/transpose/rotate, got {spec!r}")
    axes = {kind: (spec[kind] or {}).get("axes") if isinstance(spec.get(kind), dict) else None for kind in spec}
    flat = len(shape) == 2 or shape[0] == 1
    mirror, rotate = axes.get("mirror"), axes.get("rotate")
    # zeros for the axes not named, so the dicts replace (not merge into) the defaults
    plan.set("transforms.train.spatial.mirror", {a: float(mirror.get(a, 0.0)) for a in SPATIAL_AXES} if mirror else None)
    plan.set("transforms.train.spatial.transpose", list(axes.get("transpose") or []) or None)
    if rotate and flat and set(rotate) - {"z"}:
        plan.note("spatial_transforms", "rotation about x/y of a 2D sample is done in its plane (about z)")
        low = min(r[0] for r in rotate.values())
        rotate = {"z": [low, max(r[1] for r in rotate.values())]}
    plan.set("transforms.train.spatial.rotate",
             {a: list(rotate.get(a, [0, 0])) for a in SPATIAL_AXES} if rotate else None)


def steps_of(value: Any, p: float = 1.0) -> list[tuple[Any, float]]:
    """(step, probability) in order: Compose and RandomApply unpacked, nested ones too."""
    if isinstance(value, (list, tuple)):
        return [item for v in value for item in steps_of(v, p)]
    kind = callee(value).rsplit(".", 1)[-1] if isinstance(value, (Call, Ref)) else None
    if kind == "Compose" and isinstance(value, Call) and value.args:
        return steps_of(value.args[0], p)
    if kind == "RandomApply" and isinstance(value, Call):
        args = bind_args(value, ["transforms", "p"])
        return steps_of(args.get("transforms", []), p * float(args.get("p", 0.5)))
    return [(value, p)]


class RawSteps:
    """What a raw value transform pipeline does: an affine map of the uint8 values (`a * x + b`)
    and the intensity augmentations, each as `transforms.train.intensity.<step>` arguments."""

    def __init__(self, plan: Plan, name: str):
        self.plan, self.name = plan, name
        self.a, self.b, self.is_float = 1.0, 0.0, False
        self.intensity: dict[str, dict] = {}
        self.kinds: list[str] = []  # the file's names of the intensity steps

    def read(self, value: Any) -> "RawSteps":
        for step, p in steps_of(value):
            self.step(step, p)
        return self

    def step(self, step: Any, p: float) -> None:
        path = callee(step) if isinstance(step, (Call, Ref)) else repr(step)
        kind = path.rsplit(".", 1)[-1]
        if kind in NO_OP:
            return
        if kind == "ToDtype":
            scale = bind_args(step, ["dtype", "scale"]).get("scale", False) if isinstance(step, Call) else False
            if scale and not self.is_float:
                self.a, self.b = self.a / RAW_MAX, self.b / RAW_MAX
            self.is_float = True
        elif kind == "Normalize" and path.startswith("torchvision"):
            mean, std = (self.channel_value(v, what) for v, what in
                         zip(self.args(step, ["mean", "std"], {}), ("mean", "std")))
            if std == 0:
                raise self.plan.error(self.name, f"{callee(step)}: std 0 divides by zero")
            self.affine(1.0 / std, -mean / std, kind)
        elif kind == "Normalize":  # cellmap-data's: (x + shift) * scale
            shift, scale = (self.channel_value(v, what) for v, what in zip(
                self.args(step, ["shift", "scale"], {"shift": 0.0, "scale": 1 / RAW_MAX}), ("shift", "scale")))
            self.affine(scale, shift * scale, kind)
        elif (mapped := intensity_step(path, kind, step, p)) is not None:
            self.intensity[mapped[0]] = mapped[1]
            self.kinds.append(kind)
            if self.name.startswith("train"):
                self.plan.note(self.name, f"{kind} -> transforms.train.intensity.{mapped[0]} "
                                          f"({', '.join(f'{k}={v}' for k, v in mapped[1].items())})")
        else:
            self.plan.note(self.name, f"{kind}{'' if p == 1 else f' (p={p:g})'} has no equivalent in transforms/; ignored")

    def args(self, step: Any, names: list[str], defaults: dict) -> list:
        bound = {**defaults, **(bind_args(step, names) if isinstance(step, Call) else {})}
        missing = [n for n in names if n not in bound]
        if missing:
            raise self.plan.error(self.name, f"{callee(step)} without {', '.join(missing)}")
        return [bound[n] for n in names]

    def channel_value(self, value: Any, what: str) -> float:
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
        if not values or not numbers or len(set(values)) > 1:
            raise self.plan.error(self.name, f"Normalize {what} must be one number (raw has one channel), got {value!r}")
        return float(values[0])

    def affine(self, scale: float, shift: float, kind: str) -> None:
        """Compose x -> scale * x + shift after what came before."""
        if not scale or not math.isfinite(scale):
            raise self.plan.error(self.name, f"{kind} scales the raw by {scale!r}")
        self.a, self.b, self.is_float = self.a * scale, self.b * scale + shift, True
        if self.intensity:
            self.plan.note(self.name, f"{kind} after an intensity step: the steps run after the normalisation here")

    def normaliser(self) -> dict:
        """`transforms.<set>.raw` for this pipeline: unit ([0, 1]) or meanstd ((x - mean) / std)."""
        if math.isclose(self.a, 1 / RAW_MAX, rel_tol=1e-6) and abs(self.b) < 1e-9:
            return {"_target_": NORMALISER, "mode": "unit"}
        return {"_target_": NORMALISER, "mode": "meanstd", "mean": round(-self.b / self.a, 6), "std": round(1 / self.a, 6)}


def intensity_step(path: str, kind: str, step: Any, p: float) -> tuple[str, dict] | None:
    """cellmap-data's or torchvision's intensity transform -> (our step, its arguments)."""
    call = step if isinstance(step, Call) else Call(step, [], {}, 0)
    torchvision = path.startswith("torchvision")
    if kind == "GaussianNoise":
        names, defaults = (["mean", "sigma", "clip"], {"mean": 0.0, "sigma": 0.1}) if torchvision else \
            (["mean", "std"], {"mean": 0.0, "std": 1.0})
        args = {**defaults, **bind_args(call, names)}
        return "noise", {"p": p, "std": args.get("sigma", args.get("std")), "mean": args["mean"]}
    if kind == "RandomContrast":
        return "contrast", {"p": p, "factor": list(bind_args(call, ["contrast_range"]).get("contrast_range", (0.5, 1.5)))}
    if kind == "RandomGamma":
        return "gamma", {"p": p, "gamma": list(bind_args(call, ["gamma_range"]).get("gamma_range", (0.5, 1.5)))}
    if kind == "GaussianBlur":
        if torchvision:  # GaussianBlur(kernel_size, sigma=(0.1, 2.0)): in the y-x plane
            args = {"sigma": (0.1, 2.0), **bind_args(call, ["kernel_size", "sigma"])}
            size = args.get("kernel_size")
            return "blur", {"p": p, "sigma": sigma_value(args["sigma"]), "dims": 2,
                            "kernel_size": size[0] if isinstance(size, (list, tuple)) else size}
        args = {"kernel_size": 3, "sigma": 0.1, "dim": 2, **bind_args(call, ["kernel_size", "sigma", "dim", "channels"])}
        return "blur", {"p": p, "sigma": args["sigma"], "dims": args["dim"], "kernel_size": args["kernel_size"]}
    if kind == "ColorJitter" and torchvision:
        contrast = bind_args(call, ["brightness", "contrast"]).get("contrast")
        if contrast is None:
            return None
        factor = list(contrast) if isinstance(contrast, (list, tuple)) else [max(0.0, 1 - contrast), 1 + contrast]
        return "contrast", {"p": p, "factor": factor}
    return None


def sigma_value(sigma: Any) -> Any:
    return list(sigma) if isinstance(sigma, (list, tuple)) else sigma


def map_value_transforms(plan: Plan, values: dict) -> None:
    """Raw: each set's normaliser (the challenge's default for a set the file leaves out: scaled
    to [0, 1]) and the training set's intensity steps. Target: a Binarize threshold."""
    default = {"_target_": NORMALISER, "mode": "unit"}
    train = RawSteps(plan, "train_raw_value_transforms").read(values["train_raw_value_transforms"]) \
        if "train_raw_value_transforms" in values else None
    val = RawSteps(plan, "val_raw_value_transforms").read(values["val_raw_value_transforms"]) \
        if "val_raw_value_transforms" in values else None
    train_raw = train.normaliser() if train else default
    val_raw = val.normaliser() if val else default
    if train_raw != default:
        plan.set("transforms.train.raw", train_raw)
    if val_raw != train_raw:  # validation otherwise follows the training normaliser
        plan.set("transforms.val.raw", val_raw)
        if val is None:
            plan.note("val_raw_value_transforms", "not set: the challenge validates with its default ([0, 1]), not "
                                                  "the training normalisation; so does this translation",
                      plan.config.lines.get("train_raw_value_transforms", 0))
    if val is not None and val.intensity:
        plan.note("val_raw_value_transforms", f"{', '.join(val.kinds)}: validation samples are never augmented "
                                              "here (they stay fixed between epochs); ignored")
    if train is not None and train.intensity:
        set_intensity(plan, train.intensity)
    map_target_transforms(plan, values)


def set_intensity(plan: Plan, steps: dict[str, dict]) -> None:
    plan.group("transforms", "intensity")
    for name in INTENSITY_STEPS:
        if name not in steps:
            plan.set(f"transforms.train.intensity.{name}", None)
            continue
        for key, value in steps[name].items():
            plan.set(f"transforms.train.intensity.{name}.{key}", value)


def map_target_transforms(plan: Plan, values: dict) -> None:
    if "target_value_transforms" not in values:
        return
    scaled = False  # ToDtype(..., scale=True) before Binarize moves its threshold to [0, 1]
    for step, p in steps_of(values["target_value_transforms"]):
        kind = callee(step).rsplit(".", 1)[-1] if isinstance(step, (Call, Ref)) else repr(step)
        scaled = scaled or kind == "ToDtype" and isinstance(step, Call) and bool(bind_args(step, ["dtype", "scale"]).get("scale"))
        if kind == "Binarize" and isinstance(step, Call):
            threshold = bind_args(step, ["threshold"]).get("threshold", 0)
            plan.set("transforms.train.target.threshold", 0 if scaled else threshold)
        elif kind not in ("ToDtype", *NO_OP):
            plan.note("target_value_transforms", f"{kind} has no equivalent in transforms/; ignored")
