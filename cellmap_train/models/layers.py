"""Building blocks shared by the networks: one code path for 2D and 3D, picked by `spatial_dims`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cellmap_train.errors import ConfigError


def check_spatial_dims(model: str, spatial_dims: int) -> None:
    if spatial_dims not in (2, 3):
        raise ConfigError(f"{model}: spatial_dims must be 2 or 3, got {spatial_dims}")


def check_positive(model: str, **values: int) -> None:
    bad = {k: v for k, v in values.items() if not isinstance(v, int) or v < 1}
    if bad:
        raise ConfigError(f"{model}: {', '.join(f'{k}={v!r}' for k, v in bad.items())} must be integers >= 1")


def conv_layer(spatial_dims: int) -> type[nn.Module]:
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


def conv_transpose_layer(spatial_dims: int) -> type[nn.Module]:
    return nn.ConvTranspose2d if spatial_dims == 2 else nn.ConvTranspose3d


NORMS = {
    "batch": (nn.BatchNorm2d, nn.BatchNorm3d),
    "instance": (nn.InstanceNorm2d, nn.InstanceNorm3d),
}


def norm_layer(model: str, spatial_dims: int, norm: str | None, channels: int) -> nn.Module:
    """`norm`: batch | instance | none (instance norm without affine weights, as pix2pix uses it)."""
    if norm in (None, "none"):
        return nn.Identity()
    if norm not in NORMS:
        raise ConfigError(f"{model}: norm must be batch, instance or none, got {norm!r}")
    return NORMS[norm][spatial_dims - 2](channels)


def upsample_mode(model: str, spatial_dims: int, mode: str) -> str:
    """The interpolation for fixed up-sampling; "trilinear" and "bilinear" both mean linear."""
    if mode == "nearest":
        return mode
    if mode in ("trilinear", "bilinear", "linear"):
        return "bilinear" if spatial_dims == 2 else "trilinear"
    raise ConfigError(f"{model}: upsample must be transpose, trilinear, bilinear or nearest, got {mode!r}")


def check_batch(model: str, x: torch.Tensor, spatial_dims: int, in_channels: int) -> None:
    """A 2D model trains on [1,H,W] samples (batches N,C,H,W), a 3D one on [D,H,W] (N,C,D,H,W)."""
    if x.ndim != spatial_dims + 2 or x.shape[1] != in_channels:
        hint = "[1,H,W]" if spatial_dims == 2 else "[D,H,W] with D > 1"
        raise ConfigError(f"{model} (spatial_dims={spatial_dims}, in_channels={in_channels}) got a batch of shape "
                          f"{list(x.shape)}: set input_array_info.shape={hint}")


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the spatial axes at their far end up to a multiple of `multiple`."""
    pad = [(-s) % multiple for s in x.shape[2:]]
    if not any(pad):
        return x
    return nn.functional.pad(x, [p for axis in reversed(pad) for p in (0, axis)])  # F.pad lists the last axis first


def crop_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return x[(..., *[slice(0, s) for s in size])]


class DoubleConv(nn.Sequential):
    """(conv 3 -> norm -> ReLU) twice: the U-Net's unit."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm: str = "batch"):
        conv = conv_layer(spatial_dims)
        layers = []
        for channels_in in (in_channels, out_channels):
            layers += [conv(channels_in, out_channels, 3, padding=1, bias=norm in (None, "none")),
                       norm_layer("DoubleConv", spatial_dims, norm, out_channels), nn.ReLU(inplace=True)]
        super().__init__(*layers)
