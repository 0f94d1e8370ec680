"""Values a config.py takes from the machine it runs on: the device idiom and a batch scaled by
the GPU count. They are mapped to what this trainer decides on the machine that trains (never
to this machine's answer), each with a note; anything else that asks the machine needs the file run."""

from __future__ import annotations

from typing import Any

from cellmap_train.legacy.fold import Call, Ref, Unknown, first_unknown, is_plain
from cellmap_train.legacy.plan import Plan

DEVICE_AUTO = ("device=null: cuda, then mps, then cpu on the machine that trains; under torchrun each process "
               "takes its own GPU (LOCAL_RANK)")
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def settle_machine_values(plan: Plan, values: dict) -> None:
    """Replace `device` and `batch_size` in `values` by what they map to, when the file asks the
    machine for them (or builds a torch.device); other variables are left to the caller."""
    if "device" in values:
        values["device"] = device_value(plan, values["device"])
    batch = values.get("batch_size")
    if isinstance(batch, Unknown) and batch.asks_machine and "batch_size" in plan.config.per_device:
        per_gpu, count = plan.config.per_device["batch_size"]
        values["batch_size"] = per_gpu
        plan.note("batch_size", f"the file multiplies {per_gpu} by {count}, the GPU count; batch_size here is per "
                                f"process, so it is {per_gpu}: `torchrun --standalone --nproc_per_node=N -m cellmap_train "
                                f"<these overrides>` trains N x {per_gpu} per step on N GPUs, as the file meant")


def device_value(plan: Plan, value: Any) -> Any:
    """None or a device string for the `device` shorthand; Unknown when only running tells."""
    if isinstance(value, Unknown) and value.asks_machine:
        plan.note("device", f"depends on {value.asks_machine}; {DEVICE_AUTO}")
        return None
    if isinstance(value, Call) and isinstance(value.func, Ref) and value.func.path == "torch.device":
        return torch_device(plan, value)
    return value


def torch_device(plan: Plan, call: Call) -> Any:
    """`torch.device("cuda")`, `torch.device("cuda", 1)`, `torch.device(type="cpu")` -> a string."""
    args = [*call.args, *(call.kwargs[k] for k in ("type", "index") if k in call.kwargs)]
    unknown = first_unknown(args)
    if unknown is not None and unknown.asks_machine:
        plan.note("device", f"depends on {unknown.asks_machine}; {DEVICE_AUTO}")
        return None
    if unknown is not None or not is_plain(args) or not 1 <= len(args) <= 2:
        return Unknown(f"{call.source} is not known statically")
    kind, index = args[0], args[1] if len(args) == 2 else None
    if not isinstance(kind, str) or kind.split(":")[0] not in DEVICE_TYPES or index is not None and not isinstance(index, int):
        raise plan.error("device", f"{call.source} names no device this trainer uses ({', '.join(DEVICE_TYPES)})")
    return kind if index is None else f"{kind}:{index}"
