"""Channels-last memory layout (NHWC / NDHWC) for convolutional networks.

On CPU a training step runs 1.0-1.9x faster on channels-last tensors, most of the gain in
oneDNN's convolution backward (benchmarks/RESULTS.md), so `trainer.channels_last: null` turns it
on there. On CUDA it pays mostly with AMP on tensor cores; it is not measured here, so it is opt-in.
"""

from __future__ import annotations

import torch

FORMATS = {4: torch.channels_last, 5: torch.channels_last_3d}  # by tensor rank: 2D and 3D batches


def wants_channels_last(setting: bool | None, device: torch.device) -> bool:
    return device.type == "cpu" if setting is None else bool(setting)


def apply_layout(model: torch.nn.Module, setting: bool | None, device: torch.device) -> bool:
    """Put the model's weights in the layout `trainer.channels_last` asks for on `device`;
    True when its batches must then go channels-last too (`DeviceBatches`, `validate`)."""
    channels_last = wants_channels_last(setting, device)
    if channels_last:
        model_to_channels_last(model)
    return channels_last


def to_channels_last(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor in channels-last layout; other ranks (and tensors already so) unchanged, not copied."""
    memory_format = FORMATS.get(tensor.dim())
    return tensor if memory_format is None else tensor.contiguous(memory_format=memory_format)


@torch.no_grad()
def model_to_channels_last(model: torch.nn.Module) -> None:
    """Conv weights (rank 4 or 5) in place. `Module.to(memory_format=...)` cannot do this for a
    model with both ranks, and keeping the Parameter objects keeps the optimizer's references."""
    for tensor in [*model.parameters(), *model.buffers()]:
        tensor.data = to_channels_last(tensor.data)
